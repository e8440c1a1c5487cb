"""Distributed runs: torchrun starts the processes, labkit watches and steers them from the kernel.

    launch.py   the Launcher: stands in for a Trainer in the calling process (a notebook's kernel, the CLI);
                starts `python -m torch.distributed.run ... -m labkit.dist.worker` as a subprocess, relays
                rank 0's events to the listeners and the Controls' requests to rank 0, and names the rank
                that failed
    worker.py   what each process runs: joins the process group, trains with a Trainer, agrees with the other
                ranks on rank 0's requests (RankControls); rank 0 records to the store and streams events
    ranks.py    what the Trainer needs to know about the other processes (its share of each batch, the
                global loss); a single process is rank 0 of 1

No notebook code is pickled and the kernel never forks: the processes start fresh from a module entry point,
so CUDA state in the kernel cannot break them.
"""
