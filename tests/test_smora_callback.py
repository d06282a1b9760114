"""SMoRACallback in a real HF Trainer run (tiny Llama, CPU): one balance step per optimizer
step over the summed micro-batches, routing statistics in the Trainer's log."""

from __future__ import annotations

import math

import pytest
import torch

from peft_factory import tiny_llama
from rankwise.smora import SMoRAConfig, SMoRALinear, inject_smora, smora_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_trainer_with_smora_callback(tmp_path, monkeypatch):
    from transformers import Trainer, TrainingArguments

    from rankwise.smora import SMoRACallback

    cfg = SMoRAConfig(rank=8, top_k=2, lora_alpha=4.0, target_modules=["q_proj", "v_proj"], balance_rate=1e-2)
    model = inject_smora(tiny_llama(0).train(), cfg)
    gen = torch.Generator().manual_seed(0)
    seq, batch, accum, steps = 10, 2, 2, 3
    mask = torch.ones(seq, dtype=torch.int64)
    data = []
    for i in range(batch * accum * steps):
        ids = torch.randint(0, 64, (seq,), generator=gen)
        m = mask.clone()
        if i % 2:
            m[7:] = 0  # padded tokens: not counted for balancing
        data.append({"input_ids": ids, "attention_mask": m, "labels": ids})
    real_tokens_per_step = sum(int(d["attention_mask"].sum()) for d in data[: batch * accum])

    # Spy on every layer's balance step: what it sees and how often it runs.
    seen: list[int] = []
    orig = SMoRALinear.balance_step

    def spy(self):
        seen.append(int(self.balance_counts.sum()))
        orig(self)

    monkeypatch.setattr(SMoRALinear, "balance_step", spy)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        logging_steps=1,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[SMoRACallback()])
    trainer.train()

    n_layers = len(smora_layers(model))
    assert len(seen) == steps * n_layers  # once per optimizer step, not per micro-batch
    assert seen[0] == real_tokens_per_step * cfg.top_k  # both micro-batches, padding left out
    for m in smora_layers(model).values():
        q = m.balance_bias / cfg.balance_rate  # every step moves beta by -u, 0 or +u
        assert torch.allclose(q, q.round(), atol=1e-3) and q.abs().max() <= steps
        assert q.abs().max() > 0

    logs = [h for h in trainer.state.log_history if "smora/entropy" in h]
    assert len(logs) == steps
    for h in logs:
        assert 0.0 <= h["smora/entropy"] <= 1.0
        assert 0.0 <= h["smora/min_load"] <= 1.0 <= h["smora/max_load"] <= cfg.rank / cfg.top_k
        assert math.isfinite(h["loss"])


def test_readme_trainer_example_runs(tmp_path, monkeypatch):
    from pathlib import Path

    from peft import PeftModel

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("<!-- smora-trainer-example -->\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    logs = [h for h in ns["trainer"].state.log_history if "smora/entropy" in h]
    assert len(logs) == 2
    from transformers import LlamaForCausalLM

    pm = PeftModel.from_pretrained(LlamaForCausalLM(ns["config"]), "lora")
    assert any("lora_A" in n for n, _ in pm.named_parameters())
