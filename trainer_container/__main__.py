"""`python -m trainer_container`: one clean-room run configured by environment variables
(see trainer_container/environment.py); the exit code is the outcome."""
import sys

from trainer_container.run import main

sys.exit(main(lambda line: print(line, flush=True)))
