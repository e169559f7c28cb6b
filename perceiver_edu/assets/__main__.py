"""python -m perceiver_edu.assets export CHECKPOINT OUT   |   python -m perceiver_edu.assets verify"""
import argparse
import sys

from . import PRETRAINED, ChecksumError, export_weights, verified_path

parser = argparse.ArgumentParser(prog="python -m perceiver_edu.assets")
commands = parser.add_subparsers(dest="command", required=True)
export = commands.add_parser("export", help="slim a trainer checkpoint (last.pt) into a shippable file")
export.add_argument("checkpoint")
export.add_argument("out")
commands.add_parser("verify", help="check every shipped file against its recorded SHA-256")
args = parser.parse_args()

if args.command == "export":
    try:
        print(f"{args.out}: sha256 {export_weights(args.checkpoint, args.out)}")
    except (ValueError, FileNotFoundError) as error:  # UnsafeCheckpointError is a ValueError
        sys.exit(f"error: {error}")
else:
    try:
        for name in PRETRAINED:
            print(f"{name}: {verified_path(name)} OK")
    except (ChecksumError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
