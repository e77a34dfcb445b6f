"""Dataset containers read in place: one module per container, one interface (``base.Layout``).

``--data`` may be a class-folder tree, a flat folder or tar with a label file (ImageNet devkit,
Kaggle CSV), parquet shards, WebDataset tar shards, a ``.tar.gz``, or LSUN's LMDB; ``detect``
picks the layout and ``open_listing`` lists classes and entries without extracting anything.
"""
