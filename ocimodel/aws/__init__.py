"""``ocimodel aws``: build models in AWS CodeBuild straight into ECR, from a ``models.toml``.

Data flows one way: the config (``config``) and the models' sizes (``modelsizes`` asks the Hub, ``sizing`` turns
bytes into a machine and a timeout) give a plan of named resources and their settings (``plan``, pure);
``resources`` reads what exists; ``bootstrap`` diffs it against the plan and applies the difference; ``builds``
starts and follows CodeBuild builds; ``teardown`` removes what ``bootstrap`` made. boto3 and huggingface_hub are
imported only by the commands that use them.
"""
