"""PyramidDrop on a LLaVA model: the same questions with and without the plugin.

    python demos/pyramid_drop_demo.py                                  # bundled / tiny model
    python demos/pyramid_drop_demo.py --model llava-hf/llava-1.5-7b-hf  # a real checkpoint
"""

import argparse

from mmeff.demo import run_demo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    run_demo(args.model, "pyramid_drop", args.max_new_tokens, {"ratio": args.ratio})
