"""The library the pipeline stages share: paths, parameters, atomic writes, image decoding,
the zips' layout, the network, its distortions and the trial scoring."""
