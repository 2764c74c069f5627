"""Dynamic chunking, the model-facing part: routing, chunk, dechunk, the STE, the ratio loss and the fixed
boundary rules. The tools that look at a model's boundaries are in `hnet.analysis`."""
