"""`python -m nowcast.train [overrides]`: the same as `nowcast-train`."""

from nowcast.cli import train_main

if __name__ == "__main__":
    train_main()
