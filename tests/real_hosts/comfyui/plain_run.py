"""Run one plain graph in a ComfyUI started without any custom node; save its image as .npy (argv[1]).

Graph settings come as JSON in argv[2] (keyword arguments of host.base_graph). Used by the tier to compare the
same graph with and without the attnkit pack installed.
"""

import json
import sys

import numpy as np

import host

out, settings = sys.argv[1], json.loads(sys.argv[2])
host.boot(with_pack=False)
result = host.Executor().run(host.base_graph(words=None, **settings))
if not result.ok:
    raise SystemExit(f"plain graph failed: {result.error or result.validation}")
np.save(out, result.image())
