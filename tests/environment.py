"""The tests' environment, in one place: conftest sets it as defaults, and the installed-wheel fixtures pass it
to their subprocesses."""

TEST_ENV = {
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "DS_ACCELERATOR": "cpu",
}
