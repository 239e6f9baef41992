//! Hugging Face folders through the command line: bad folders refused by name, train one
//! step → export → load identical to the checkpoint, the grad dump's names, Qwen3 trained
//! on cpu (loss falls, exports back to Qwen3) and on ane-sim, tokenizer.json
//! (built here with the `tokenizers` crate) and uint32 token files.

mod hf_common;

use anetrain::data::TokenData;
use anetrain::model::hf;
use hf_common::*;
use serde_json::json;
use std::path::Path;

fn folder(dir: &Path, spec: &Spec, dtype: &str) -> Model {
    let m = Model::random(spec, 9, dtype);
    m.write(dir, dtype, 1);
    m
}

type ConfigEdit = Box<dyn Fn(&mut serde_json::Value)>;
type Tensors = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;

fn err_of(dir: &Path) -> String {
    format!("{:#}", hf::load(dir).unwrap_err())
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut j);
    std::fs::write(&p, j.to_string()).unwrap();
}

#[test]
fn bad_folders_are_refused_naming_the_file_and_the_field() {
    let root = tempfile::tempdir().unwrap();
    let spec = Spec::llama(16, 4, 2);
    let fresh = |name: &str| {
        let d = root.path().join(name);
        folder(&d, &spec, "bfloat16");
        d
    };
    // Missing config: as a --model it is named.
    let d = fresh("noconfig");
    std::fs::remove_file(d.join("config.json")).unwrap();
    let e = format!(
        "{:#}",
        anetrain::model::ModelSource::resolve(d.to_str().unwrap()).unwrap_err()
    );
    assert!(e.contains("noconfig") && e.contains("config.json"), "{e}");

    let cases: Vec<(&str, ConfigEdit, &[&str])> = vec![
        (
            "arch",
            Box::new(|j| j["architectures"] = json!(["MistralForCausalLM"])),
            &["architectures", "MistralForCausalLM"],
        ),
        (
            "yarn",
            Box::new(|j| j["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0})),
            &["rope_scaling", "yarn"],
        ),
        (
            "bias",
            Box::new(|j| j["attention_bias"] = json!(true)),
            &["attention_bias"],
        ),
        (
            "mlpbias",
            Box::new(|j| j["mlp_bias"] = json!(true)),
            &["mlp_bias"],
        ),
        (
            "act",
            Box::new(|j| j["hidden_act"] = json!("gelu")),
            &["hidden_act", "gelu"],
        ),
        (
            "window",
            Box::new(|j| j["sliding_window"] = json!(4096)),
            &["sliding_window"],
        ),
        (
            "dropout",
            Box::new(|j| j["attention_dropout"] = json!(0.1)),
            &["attention_dropout"],
        ),
        (
            "heads",
            Box::new(|j| j["num_key_value_heads"] = json!(3)),
            &["n_kv_heads"],
        ),
        (
            "nohidden",
            Box::new(|j| {
                j.as_object_mut().unwrap().remove("hidden_size");
            }),
            &["hidden_size", "missing"],
        ),
        (
            "huge",
            Box::new(|j| j["num_hidden_layers"] = json!(1u64 << 40)),
            &["n_layers"],
        ),
    ];
    for (name, f, words) in cases {
        let d = fresh(name);
        edit_config(&d, f);
        let e = err_of(&d);
        assert!(e.contains("config.json"), "{name}: {e}");
        for w in words {
            assert!(e.contains(w), "{name}: {e} should name {w}");
        }
    }

    // Weights: a tensor missing, of the wrong shape, of the wrong dtype; a truncated file.
    let write_with = |name: &str, edit: &dyn Fn(&mut Tensors)| {
        let d = fresh(name);
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut ts: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        edit(&mut ts);
        let views: Vec<_> = ts
            .iter()
            .map(|(n, dt, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, &None, &p).unwrap();
        d
    };
    let d = write_with("missing", &|ts| {
        ts.retain(|t| t.0 != "model.layers.1.mlp.up_proj.weight")
    });
    let e = err_of(&d);
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("missing"),
        "{e}"
    );
    let d = write_with("nohead", &|ts| ts.retain(|t| t.0 != "lm_head.weight"));
    let e = err_of(&d);
    assert!(
        e.contains("lm_head.weight") && e.contains("tie_word_embeddings"),
        "{e}"
    );
    let d = write_with("shape", &|ts| {
        let t = ts.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        t.2 = vec![8, 2];
    });
    let e = err_of(&d);
    assert!(
        e.contains("model.norm.weight") && e.contains("[8, 2]") && e.contains("model.safetensors"),
        "{e}"
    );
    let d = write_with("dtype", &|ts| {
        let t = ts.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        t.1 = safetensors::Dtype::I16;
    });
    let e = err_of(&d);
    assert!(e.contains("model.norm.weight") && e.contains("I16"), "{e}");
    let d = fresh("truncated");
    let p = d.join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 10]).unwrap();
    let e = err_of(&d);
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    std::fs::write(&p, &b[..5]).unwrap();
    assert!(err_of(&d).contains("model.safetensors"));

    // An index naming a shard that is not there.
    let d = root.path().join("shards");
    Model::random(&spec, 3, "float32").write(&d, "float32", 2);
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    let e = err_of(&d);
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
    // No weights at all.
    let d = fresh("noweights");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    assert!(err_of(&d).contains("model.safetensors"));
}

/// HF → train one step → export HF (f32) → load: identical to the checkpoint's parameters;
/// the exported config keeps the architecture; info and the grad dump use the folder too.
#[test]
fn train_one_step_export_and_load_again() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("smol");
    let mut spec = Spec::llama(16, 2, 1);
    spec.tied = true;
    spec.theta = 100000.0;
    folder(&src, &spec, "bfloat16");
    let mut r = Rng::new(4);
    let ids: Vec<u32> = (0..400)
        .map(|_| 3 + ((r.next() + 1.0) * 14.0) as u32 % 29)
        .collect();
    write_u16(&d.path().join("tok.bin"), &ids);

    let (code, out, err) = run(&["info", "--model", "smol"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dim 16"), "{out}");

    let (code, _, err) = run(
        &[
            "train",
            "--model",
            "smol",
            "--data",
            "tok.bin",
            "--steps",
            "1",
            "--batch",
            "2",
            "--seq",
            "8",
            "--out",
            "run",
            "--eval-every",
            "0",
            "--val-fraction",
            "0",
            "--quiet",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        &[
            "export",
            "--ckpt",
            "run/model.ckpt",
            "--format",
            "hf",
            "--dtype",
            "f32",
            "-o",
            "back",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let ck = anetrain::train::checkpoint::load(&d.path().join("run/model.ckpt")).unwrap();
    assert_eq!(
        ck.header.config.hf.as_ref().unwrap().architecture,
        "LlamaForCausalLM"
    );
    let back = hf::load(&d.path().join("back")).unwrap();
    assert_eq!(
        back.data, ck.params.data,
        "exported tensors = the checkpoint's"
    );
    let orig = hf::load(&src).unwrap();
    assert_ne!(back.data, orig.data, "one step changed the weights");
    let cj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("back/config.json")).unwrap())
            .unwrap();
    assert_eq!(cj["tie_word_embeddings"], true);
    assert_eq!(cj["rope_theta"], 100000.0);

    // The grad dump: transformers' names and shapes, loss in the metadata.
    let (code, out, err) = run(
        &[
            "grad",
            "--model",
            "smol",
            "--data",
            "tok.bin",
            "--seq",
            "8",
            "--out",
            "g.safetensors",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loss"), "{out}");
    let b = std::fs::read(d.path().join("g.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let mut want: Vec<String> = spec.tensor_shapes().into_iter().map(|t| t.0).collect();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        st.tensor("model.layers.0.self_attn.k_proj.weight")
            .unwrap()
            .shape(),
        &[8, 16]
    );

    // llama2c export of a Qwen3 model is refused by saying why.
    let q = d.path().join("qwen");
    folder(
        &q,
        &Spec {
            arch: "Qwen3ForCausalLM",
            head_dim: 6,
            ..Spec::llama(16, 4, 2)
        },
        "bfloat16",
    );
    let (code, _, err) = run(&["export", "--model", "qwen", "-o", "q.bin"], d.path());
    assert_ne!(code, 0);
    assert!(
        err.contains("q_norm") && err.contains("--format hf"),
        "{err}"
    );
    // Qwen3 trains on the cpu backend: the loss falls, and the checkpoint exports back to a
    // Qwen3 folder whose q/k norm gains the steps moved.
    let (code, _, err) = run(
        &[
            "train",
            "--model",
            "qwen",
            "--data",
            "tok.bin",
            "--steps",
            "30",
            "--batch",
            "2",
            "--seq",
            "8",
            "--lr",
            "0.01",
            "--warmup",
            "0",
            "--out",
            "qrun",
            "--eval-every",
            "0",
            "--val-fraction",
            "0",
            "--quiet",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let ev = anetrain::train::log::read_log(&d.path().join("qrun/run.jsonl")).unwrap();
    let losses: Vec<f64> = ev
        .iter()
        .filter_map(|e| match e {
            anetrain::train::log::Event::Step(s) => Some(s.loss),
            _ => None,
        })
        .collect();
    assert_eq!(losses.len(), 30, "{losses:?}");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&losses[25..]) < mean(&losses[..5]) - 0.1,
        "Qwen3 loss did not fall: {losses:?}"
    );
    let (code, _, err) = run(
        &[
            "export",
            "--ckpt",
            "qrun/model.ckpt",
            "--format",
            "hf",
            "--dtype",
            "f32",
            "-o",
            "qback",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let cj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("qback/config.json")).unwrap())
            .unwrap();
    assert_eq!(cj["architectures"][0], "Qwen3ForCausalLM");
    assert_eq!(cj["head_dim"], 6);
    let ck = anetrain::train::checkpoint::load(&d.path().join("qrun/model.ckpt")).unwrap();
    let qback = hf::load(&d.path().join("qback")).unwrap();
    assert!(qback.config().qk_norm);
    assert_eq!(
        qback.data, ck.params.data,
        "exported tensors = the checkpoint's"
    );
    let qorig = hf::load(&q).unwrap();
    let qn = qorig.layout.q_norm.clone();
    let kn = qorig.layout.k_norm.clone();
    assert_ne!(qback.data[qn.clone()], qorig.data[qn], "q_norm trained");
    assert_ne!(qback.data[kn.clone()], qorig.data[kn], "k_norm trained");
    // eval and grad run on it too; the grad dump holds the q/k norm gradients.
    let (code, out, err) = run(
        &[
            "eval", "--model", "qwen", "--data", "tok.bin", "--all", "--seq", "8",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("perplexity"), "{out}");
    let (code, _, err) = run(
        &[
            "grad",
            "--model",
            "qwen",
            "--data",
            "tok.bin",
            "--seq",
            "8",
            "-o",
            "qg.safetensors",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let b = std::fs::read(d.path().join("qg.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    assert_eq!(
        st.tensor("model.layers.1.self_attn.k_norm.weight")
            .unwrap()
            .shape(),
        &[6]
    );
    // The simulated Neural Engine trains it with fwd_attn placed on the CPU.
    let (code, _, err) = run(
        &[
            "train",
            "--model",
            "qwen",
            "--data",
            "tok.bin",
            "--steps",
            "2",
            "--batch",
            "1",
            "--seq",
            "8",
            "--out",
            "qrun-sim",
            "--eval-every",
            "0",
            "--val-fraction",
            "0",
            "--backend",
            "ane-sim",
            "--quiet",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");

    // The simulated Neural Engine trains the Llama-family folder too.
    let (code, _, err) = run(
        &[
            "train",
            "--model",
            "smol",
            "--data",
            "tok.bin",
            "--steps",
            "1",
            "--batch",
            "1",
            "--seq",
            "8",
            "--out",
            "run-sim",
            "--eval-every",
            "0",
            "--val-fraction",
            "0",
            "--backend",
            "ane-sim",
            "--quiet",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
}

/// A WordLevel tokenizer.json of more than 65536 words, built with the tokenizers crate:
/// `tokenize` writes uint32 ids (the sidecar says so), the reader reads them back, and eval
/// runs on them with a model of that vocabulary.
#[test]
fn tokenizer_json_and_uint32_token_files() {
    use tokenizers::models::wordlevel::WordLevel;
    let d = tempfile::tempdir().unwrap();
    let n = 70_000usize;
    let mut vocab = std::collections::HashMap::new();
    for (i, w) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(w.to_string(), i as u32);
    }
    for i in 3..n {
        vocab.insert(format!("w{i}"), i as u32);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let mut tk = tokenizers::Tokenizer::new(model);
    tk.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    tk.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    let tj = d.path().join("tokenizer.json");
    tk.save(&tj, false).unwrap();
    std::fs::write(
        d.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>"}"#,
    )
    .unwrap();

    let t = anetrain::tokenizer::hf::HfTokenizer::load(&tj).unwrap();
    assert_eq!((t.vocab_size(), t.bos, t.eos), (n, Some(1), Some(2)));
    let ids = t.encode_plain("w5 w69999 w65536 w70001").unwrap();
    assert_eq!(ids, vec![5, 69999, 65536, 0]);
    assert_eq!(t.decode(&ids[..3]).unwrap(), "w5 w69999 w65536");

    std::fs::write(d.path().join("docs.txt"), "w3 w65600 w4\n\nw69998 w10\n").unwrap();
    let (code, out, err) = run(
        &[
            "tokenize",
            "--tokenizer",
            "tokenizer.json",
            "docs.txt",
            "-o",
            "t32.bin",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("u32"), "{out}");
    let raw = std::fs::read(d.path().join("t32.bin")).unwrap();
    let want = [1u32, 3, 65600, 4, 1, 69998, 10];
    assert_eq!(raw.len(), 4 * want.len());
    let td = TokenData::open(&d.path().join("t32.bin")).unwrap();
    assert_eq!(td.width(), 4);
    assert_eq!(td.ids().to_vec(), want);
    // Without the sidecar the same file reads as uint16, as every token file did before.
    let plain = d.path().join("plain.bin");
    std::fs::write(&plain, &raw).unwrap();
    assert_eq!(TokenData::open(&plain).unwrap().width(), 2);
    // A uint32 file must be a whole number of ids.
    let bad = d.path().join("bad.bin");
    std::fs::write(&bad, &raw[..raw.len() - 2]).unwrap();
    std::fs::copy(d.path().join("t32.bin.json"), d.path().join("bad.bin.json")).unwrap();
    let e = format!("{:#}", TokenData::open(&bad).err().unwrap());
    assert!(e.contains("bad.bin") && e.contains("multiple of 4"), "{e}");

    // A model of that vocabulary evaluates the uint32 file.
    let spec = Spec {
        vocab: n,
        dim: 8,
        hidden: 8,
        layers: 1,
        heads: 2,
        kv_heads: 1,
        head_dim: 4,
        tied: true,
        ..Spec::llama(8, 2, 1)
    };
    folder(&d.path().join("big"), &spec, "bfloat16");
    let more: Vec<u32> = (0..40).map(|i| 60_000 + i * 200).collect();
    let b: Vec<u8> = more.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(d.path().join("more.bin"), b).unwrap();
    let mut sc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("t32.bin.json")).unwrap())
            .unwrap();
    sc["tokens"] = json!(more.len());
    std::fs::write(d.path().join("more.bin.json"), sc.to_string()).unwrap();
    let (code, out, err) = run(
        &[
            "eval", "--model", "big", "--data", "more.bin", "--all", "--batch", "1", "--seq", "16",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loss"), "{out}");
    // And generate finds the folder's own tokenizer.
    std::fs::copy(&tj, d.path().join("big/tokenizer.json")).unwrap();
    let (code, out, err) = run(
        &[
            "generate",
            "--model",
            "big",
            "--prompt",
            "w5 w6",
            "-n",
            "6",
            "--temperature",
            "0",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("w5 w6"), "{out}");
}
