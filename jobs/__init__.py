"""PySpark jobs: pure DataFrame transforms plus thin ``main(argv)`` entry points."""
