#!/usr/bin/env bash
# The README's main command, from a fresh clone:  bash scripts/demo.sh [fiftyone-cass demo options]
#
# 1. bash scripts/setup.sh  -- creates .venv, installs the project, makes FiftyOne's bundled MongoDB
#    runnable (idempotent: a few seconds when everything is in place);
# 2. fiftyone-cass demo     -- copies six sample images that ship with scikit-image (no download),
#    labels them with CASS + CDAM (person, cat, cup, rocket, motorcycle, sky) into the persistent
#    FiftyOne dataset 'fiftyone-cass-demo' in FiftyOne's default database, prints a summary and how
#    to open the App (fiftyone-cass app fiftyone-cass-demo).
#
# The model weights (CLIP ViT-B/16 OpenAI + DINO ViT-B/8, ~0.9 GB) are downloaded from the Hugging
# Face hub on first use. Offline: pass local files, e.g.
#   bash scripts/demo.sh --clip-checkpoint open_clip_model.safetensors --dino-checkpoint dino_vitbase8_pretrain.pth
# Without weights or hub access the demo stops at once with a message saying what is missing (exit 2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
# shellcheck source=/dev/null
. "$ROOT/.cache/env.sh"
exec "$FIFTYONE_CASS_VENV/bin/fiftyone-cass" demo "$@"
