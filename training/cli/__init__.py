"""``pancreas`` subcommands of the training stage (convert, plan, train, ablate, export-bundle, oof).

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and imports torch/nnU-Net inside
``run`` only, so ``--help`` stays fast; the registry is :data:`pancreas.cli.COMMANDS`.
"""
