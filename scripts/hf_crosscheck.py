#!/usr/bin/env python3
"""Cross-check anetrain against transformers on tiny random Hugging Face models.

Creates LlamaForCausalLM / Qwen3ForCausalLM models from a config (no hub access), saves
them with save_pretrained, then compares, per model:
  - the mean cross-entropy loss of one window (`anetrain eval`) with transformers' loss;
  - every gradient (`anetrain grad`, transformers' names and layout) with `param.grad`;
  - greedy generation (`anetrain generate --temperature 0`) with `model.generate`.
Reports max relative errors (max |a-b| / max |b| per tensor). Needs torch, transformers and
safetensors:  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers safetensors
Usage: scripts/hf_crosscheck.py [--anetrain target/release/anetrain] [--keep DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
import transformers


def models():
    """(name, config class, kwargs) of the models checked."""
    L = transformers.LlamaConfig
    base = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=1,
                eos_token_id=2, tie_word_embeddings=False)
    out = [
        ("llama-gqa-untied", L, dict(base, rope_theta=10000.0)),
        ("smollm2-tied-theta1e5", L, dict(base, num_key_value_heads=1, tie_word_embeddings=True,
                                          rope_theta=100000.0)),
        ("llama3-rope-scaling", L, dict(base, rope_theta=500000.0,
                                        rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                      "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 32})),
    ]
    if hasattr(transformers, "Qwen3Config"):
        out.append(("qwen3-qk-norm", transformers.Qwen3Config,
                    dict(base, head_dim=24, rope_theta=1000000.0, rms_norm_eps=1e-6)))
    return out


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--anetrain", default="target/release/anetrain")
    ap.add_argument("--keep", help="keep the model folders in this directory")
    ap.add_argument("--seq", type=int, default=24)
    a = ap.parse_args()
    root = a.keep or tempfile.mkdtemp(prefix="hf_crosscheck_")
    os.makedirs(root, exist_ok=True)
    torch.manual_seed(0)
    worst = {}
    failures = 0
    for name, cls, kw in models():
        d = os.path.join(root, name)
        cfg = cls(**kw)
        cfg._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
        with torch.no_grad():  # non-trivial gains and larger weights than the init
            for n, p in model.named_parameters():
                if p.dim() == 1:
                    p.copy_(1.0 + 0.3 * torch.randn_like(p))
                else:
                    p.mul_(5.0)
        model.save_pretrained(d, safe_serialization=True)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(3, cfg.vocab_size, (4 * a.seq,), generator=g)
        data = os.path.join(d, "tokens.bin")
        ids.to(torch.int16).numpy().astype("<u2").tofile(data)
        S = a.seq

        # Loss and gradients in transformers.
        model.zero_grad()
        logits = model(ids[None, :S]).logits[0]
        loss = torch.nn.functional.cross_entropy(logits, ids[1:S + 1])
        loss.backward()

        rc, out, err = run([a.anetrain, "eval", "--model", d, "--data", data, "--batch", "1",
                            "--seq", str(S), "--all", "--eval-batches", "1"])
        line = f"{name}:"
        if rc == 0:
            ours = float(out.split()[1])
            e = abs(ours - loss.item()) / abs(loss.item())
            worst[f"{name} loss"] = e
            line += f" loss {ours:.6f} vs {loss.item():.6f} (rel {e:.1e})"
            gpath = os.path.join(d, "grads.safetensors")
            rc, out, err = run([a.anetrain, "grad", "--model", d, "--data", data, "--seq",
                                str(S), "--out", gpath])
            if rc != 0:
                print(f"{name}: grad failed: {err.strip()}")
                failures += 1
                continue
            # grad prints the loss with 6 decimals (eval with 4): compare that one.
            ours = float(out.split()[1].rstrip(";"))
            e = abs(ours - loss.item()) / abs(loss.item())
            worst[f"{name} loss"] = e
            line = f"{name}: loss {ours:.6f} vs {loss.item():.6f} (rel {e:.1e})"
            ours_g = load_file(gpath)
            errs = []
            params = dict(model.named_parameters())
            for n, p in params.items():
                if n not in ours_g:
                    if n == "lm_head.weight" and cfg.tie_word_embeddings:
                        continue
                    print(f"  {n}: missing from anetrain's grad dump")
                    failures += 1
                    continue
                if tuple(ours_g[n].shape) != tuple(p.grad.shape):
                    print(f"  {n}: shape {tuple(ours_g[n].shape)} vs {tuple(p.grad.shape)}")
                    failures += 1
                    continue
                errs.append((rel(ours_g[n], p.grad), n))
            e, n = max(errs)
            worst[f"{name} grad"] = e
            line += f"; {len(errs)} gradients, max rel err {e:.1e} ({n})"
        else:
            line += f" eval refused: {err.strip().splitlines()[-1]}"

        # Greedy generation.
        prompt = ids[:5]
        with torch.no_grad():
            gen = model.generate(prompt[None], max_new_tokens=20, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0].tolist()
        rc, out, err = run([a.anetrain, "generate", "--model", d, "--prompt-ids",
                            ",".join(map(str, prompt.tolist())), "-n", str(len(gen)),
                            "--temperature", "0"])
        if rc != 0:
            print(line + f"; generate failed: {err.strip()}")
            failures += 1
            continue
        got = [int(x) for x in out.split()][:len(gen) - 1]
        same = got == gen[1:]
        line += f"; greedy {len(got)} tokens {'identical' if same else 'DIFFER'}"
        if not same:
            failures += 1
            line += f"\n    ours {got}\n    hf   {gen[1:]}"
        print(line)
    # A llama2.c model exported with `export --format hf` loads in transformers and computes
    # the loss anetrain computes on the .bin.
    fx = os.environ.get("ANETRAIN_FIXTURES", os.path.join(os.path.dirname(__file__), "..", "..",
                                                        "shared", "fixtures"))
    binf = os.path.join(fx, "stories260K.bin")
    if os.path.exists(binf):
        d = os.path.join(root, "stories260K-hf")
        rc, out, err = run([a.anetrain, "export", "--model", binf, "--format", "hf", "-o", d])
        if rc != 0:
            print(f"export of {binf} failed: {err.strip()}")
            failures += 1
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager")
            ids = torch.randint(3, 512, (64,), generator=torch.Generator().manual_seed(2))
            data = os.path.join(d, "tokens.bin")
            ids.numpy().astype("<u2").tofile(data)
            with torch.no_grad():
                loss = torch.nn.functional.cross_entropy(model(ids[None, :32]).logits[0],
                                                         ids[1:33]).item()
            rc, out, err = run([a.anetrain, "grad", "--model", binf, "--data", data, "--seq", "32",
                                "--out", os.path.join(d, "g.safetensors")])
            ours = float(out.split()[1].rstrip(";"))
            e = abs(ours - loss) / loss
            worst["stories260K.bin exported to hf, loss"] = e
            print(f"stories260K.bin -> export --format hf -> transformers: loss {loss:.6f}, "
                  f"anetrain on the .bin {ours:.6f} (rel {e:.1e})")
    print(json.dumps(worst, indent=1))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}; folders in {root}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
