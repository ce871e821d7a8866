"""``python -m paper_figures``: run the missing experiments and draw every figure and table (see `make`)."""

from paper_figures.make import main

if __name__ == "__main__":
    main()
