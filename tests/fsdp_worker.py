"""SALAD distillation under torch's own FSDP2 (`fully_shard`) on CPU, one process of `torchrun`.

accelerate runs a CPU launch as MULTI_CPU and upgrades only GPU-like launches to FSDP, so `configs/accelerate/fsdp.yaml`
trains with DDP on a CPU (README, "Multi-process training"). This worker is the nearest run that shards on a CPU: the
same model, collator, loss (`SaladDistillationTrainer.compute_loss`), optimizer groups and schedule as `salad-train`,
with every LLM and adapter layer and the root sharded by `fully_shard` over gloo, checkpointed and resumed through
`torch.distributed.checkpoint`. `tests/test_distributed.py` launches it:

    torchrun --nproc_per_node 2 tests/fsdp_worker.py --model DIR --rows rows.jsonl --output_dir OUT [--resume CKPT]

Rows are taken in file order, `global_batch` a step, each process its contiguous share. It writes `losses.json`
(step -> loss over all processes), `checkpoint-{save_at}/` and the full weights of the last step, `model.safetensors`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from modeling_salad import SaladForConditionalGeneration, SaladProcessor
from trainers.distillation.config import SaladDistillationConfig
from trainers.distillation.trainer import SaladDistillationTrainer


def shard(model: SaladForConditionalGeneration, world_size: int) -> None:
    """FSDP2 as the paper-size runs would use it: each decoder layer of the LLM and of the adapter, then the root."""
    mesh = init_device_mesh("cpu", (world_size,))
    for layer in [*model.language_model.model.layers, *model.adapter.decoder.layers]:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--model", "--rows", "--output_dir", "--config"):
        parser.add_argument(name, required=True)
    parser.add_argument("--resume", default=None)
    cli = parser.parse_args()
    settings = json.loads(Path(cli.config).read_text())
    steps, save_at, global_batch = (
        settings.pop("steps"),
        settings.pop("save_at"),
        settings.pop("global_batch"),
    )
    output = Path(cli.output_dir)
    args = SaladDistillationConfig(output_dir=str(output), **settings)  # initializes the gloo process group
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = SaladForConditionalGeneration.from_pretrained(cli.model)
    processor = SaladProcessor.from_pretrained(cli.model)
    trainer = SaladDistillationTrainer(
        model=model, args=args, processing_class=processor
    )  # the teacher: a copy
    shard(model, world_size)
    optimizer = trainer.create_optimizer()
    scheduler = trainer.create_scheduler(num_training_steps=steps, optimizer=optimizer)
    rows = [json.loads(line) for line in Path(cli.rows).read_text().splitlines()]
    losses, start = {}, 0
    if cli.resume is not None:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=cli.resume)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        progress = json.loads((Path(cli.resume) / "progress.json").read_text())
        start, losses = progress["step"], progress["losses"]
        scheduler.load_state_dict(progress["scheduler"])
    model.train()
    share = global_batch // world_size
    for step in range(start, steps):
        batch = trainer.data_collator(rows[step * global_batch + rank * share :][:share])
        for key in ("rows_in_batch", "bad_row_reasons", "speech_seconds"):
            batch.pop(key, None)
        tokens = torch.tensor(len(batch["target_ids"]))
        dist.all_reduce(tokens)
        loss = trainer.compute_loss(model, batch, num_items_in_batch=tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        total = loss.detach().clone()
        dist.all_reduce(total)  # each process's loss is its share of the global mean, times the process count
        losses[str(step + 1)] = total.item() / world_size
        if step + 1 == save_at:
            checkpoint = output / f"checkpoint-{save_at}"
            model_state, optimizer_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)
            if rank == 0:
                progress = {"step": save_at, "losses": losses, "scheduler": scheduler.state_dict()}
                (checkpoint / "progress.json").write_text(json.dumps(progress))
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        save_file(
            {name: value.clone().contiguous() for name, value in weights.items()},
            output / "model.safetensors",
        )
        (output / "losses.json").write_text(json.dumps(losses))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
