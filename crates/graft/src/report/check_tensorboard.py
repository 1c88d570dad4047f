#!/usr/bin/env python3
"""Check that TensorBoard itself can read graft's event files.

Usage (needs `pip install tensorboard`):
    GRAFT_TB_DIR=/tmp/graft-tb cargo test --release -p graft --lib \
        report::tensorboard::tests::write_sample_for_tensorboard -- --ignored
    python3 crates/graft/src/report/check_tensorboard.py /tmp/graft-tb

Prints the scalar tags and every (step, value) of each; exits non-zero when TensorBoard finds
no scalars in the directory.
"""
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} EVENT_DIR", file=sys.stderr)
        return 2
    ea = EventAccumulator(sys.argv[1])
    ea.Reload()
    tags = ea.Tags()
    print("tags:", tags)
    scalar_tags = tags.get("scalars", [])
    if not scalar_tags:
        print("error: no scalar tags found", file=sys.stderr)
        return 1
    for tag in scalar_tags:
        print(f"{tag}:", [(e.step, e.value) for e in ea.Scalars(tag)])
        print(f"{tag} (raw):", ea.Scalars(tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
