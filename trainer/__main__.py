"""`python -m trainer ...` (what torchrun runs) is the same as `edge-gfs train ...`."""

from trainer.train import main

if __name__ == "__main__":
    raise SystemExit(main())
