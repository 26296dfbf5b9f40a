"""The training loop and what it runs: the `Task` contract (`task`), the one loop (`engine`),
schedules and EMA (`optim`), torchrun/DDP (`distributed`) and TensorBoard logging."""
