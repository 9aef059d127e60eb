"""The stages of the pipeline, a module each, thin: each reads its params, calls the library (ffl/)
and the shared pipeline modules (pipeline.dataset, pipeline.run, pipeline.model_file), and writes
its outputs. Each stage is one function that `dvc repro` (dvc.yaml, through the `ffl` command of
the same name) and a user both call:

- ``prepare``: the dataset, made from the params;
- ``train``: one run, in this process or over DDP processes, under the directory's lock;
- ``evaluate``: the test metrics and the pictures;
- ``deploy``: export and predict;
- ``sequence``: dvc.yaml's stages in its order, for runs made in this process (``ffl reproduce``).
"""
