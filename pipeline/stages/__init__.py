"""The stages of the pipeline, a module each. Each stage is one function that `dvc repro`
(dvc.yaml, through the `ffl` command of the same name) and a user both call:

- ``prepare``: the dataset, made, checked and turned into batches;
- ``train``: one run, in this process or over DDP processes, under the directory's lock;
- ``evaluate``: the test metrics and the pictures;
- ``model_file``: the trained model file and its checks (what predict and export read);
- ``deploy``: export and predict.
"""
