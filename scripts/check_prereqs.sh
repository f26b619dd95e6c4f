#!/usr/bin/env bash
# Set-up prerequisites, checked by `make` before it creates .venv (and before demo / test):
#   Python 3.11 (the interpreter given, default $PYTHON_BOOT or python3) and Java >= 17 for Spark 4
#   ($JAVA_HOME/bin/java when JAVA_HOME is set, as spark-submit does; else java on PATH).
# Prints one line per missing prerequisite on stderr and exits 1; silent with exit 0 when all are there.
#
#   scripts/check_prereqs.sh [PYTHON]        (VENV_DIR=dir when PYTHON is that venv's interpreter)
#
# Pure bash (no grep/sed), so it runs with any PATH.
set -uo pipefail

python=${1:-${PYTHON_BOOT:-python3}}
failed=0

# --- Python 3.11 ---------------------------------------------------------------------------------
hint="set PYTHON_BOOT=/path/to/python3.11"
# VENV_DIR: PYTHON is the interpreter of an existing virtual environment (make passes it)
[[ -n ${VENV_DIR:-} ]] && hint="remove $VENV_DIR and set PYTHON_BOOT=/path/to/python3.11"
if ! py_path=$(command -v -- "$python" 2>/dev/null) || [[ -z $py_path ]]; then
  echo "make: Python 3.11 is required ($python not found on PATH); $hint" >&2
  failed=1
else
  py_out=$("$py_path" --version 2>&1)
  if [[ $py_out =~ Python\ ([0-9]+)\.([0-9]+)(\.[0-9]+)? ]]; then
    py_version=${BASH_REMATCH[1]}.${BASH_REMATCH[2]}${BASH_REMATCH[3]}
    if [[ ${BASH_REMATCH[1]}.${BASH_REMATCH[2]} != 3.11 ]]; then
      echo "make: Python 3.11 is required (found $py_version at $py_path); $hint" >&2
      failed=1
    fi
  else
    echo "make: Python 3.11 is required ('$py_path --version' said: ${py_out%%$'\n'*}); $hint" >&2
    failed=1
  fi
fi

# --- Java >= 17 ----------------------------------------------------------------------------------
java_hint="install openjdk-17-jre-headless or set JAVA_HOME"
java=""
if [[ -n ${JAVA_HOME:-} ]]; then
  if [[ -x $JAVA_HOME/bin/java ]]; then
    java=$JAVA_HOME/bin/java
  else
    echo "make: Java >= 17 is required for Spark (JAVA_HOME=$JAVA_HOME has no bin/java; $java_hint)" >&2
    failed=1
  fi
elif ! java=$(command -v java 2>/dev/null) || [[ -z $java ]]; then
  echo "make: Java >= 17 is required for Spark (java not found on PATH; $java_hint)" >&2
  java=""
  failed=1
fi
if [[ -n $java ]]; then
  java_out=$("$java" -version 2>&1)
  # openjdk version "17.0.15" 2025-04-15 | java version "1.8.0_361" | openjdk version "21" 2023-09-19
  if [[ $java_out =~ version\ \"([0-9][^\"]*)\" ]]; then
    java_version=${BASH_REMATCH[1]}
    if [[ $java_version =~ ^1\.([0-9]+) ]]; then  # 1.8.0_361 is Java 8
      major=${BASH_REMATCH[1]}
    else
      [[ $java_version =~ ^([0-9]+) ]]
      major=${BASH_REMATCH[1]}
    fi
    if (( major < 17 )); then
      echo "make: Java >= 17 is required for Spark (found $java_version at $java; $java_hint)" >&2
      failed=1
    fi
  else
    echo "make: Java >= 17 is required for Spark ('$java -version' said: ${java_out%%$'\n'*}; $java_hint)" >&2
    failed=1
  fi
fi

exit "$failed"
