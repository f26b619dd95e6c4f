"""``python -m sources.synthetic``: write the synthetic raw partitions (see ``generator.main``)."""

from sources.synthetic.generator import main

if __name__ == "__main__":
    main()
