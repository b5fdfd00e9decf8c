//! Validation's checks one by one on a six-word vocabulary: defaults, every range with its
//! parameter named, prompt and context limits naming the request's prompt field, the
//! log-probability budget, and the order of checks (tokenize before compiling a grammar).

use super::*;
use crate::testing::word_level;
use tokenizers::pre_tokenizers::whitespace::Whitespace;

const WORDS: [&str; 6] = ["<unk>", "<s>", "</s>", "a", "b", "c"];

/// A validator over a six-word vocabulary (`<s>` is BOS, `</s>` EOS): 8 input tokens, 12 in
/// all, no chat template, no grammar compiler.
pub(crate) fn validator() -> Validator {
    let mut tokenizer = word_level(&WORDS);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    let info = ModelInfo {
        model_id: "test".into(),
        architecture: "llama".into(),
        dtype: "f32".into(),
        device: "cpu".into(),
        vocab_size: WORDS.len(),
        max_context: 12,
        kv_block_size: 4,
        num_kv_blocks: 3,
    };
    let limits = Limits {
        max_input_tokens: 8,
        max_total_tokens: 12,
        max_n: 4,
        max_stop: 2,
        max_top_logprobs: 5,
        max_logprob_entries: 40,
    };
    let vocab = Vocab {
        tokenizer: Arc::new(tokenizer),
        plain_bos: Some(1),
        eos_token_ids: vec![2],
    };
    Validator::new(
        vocab,
        None,
        info,
        limits,
        Err("no grammar here".into()),
        true,
    )
}

fn text(words: &str) -> PromptInput {
    PromptInput::text("prompt", words)
}

/// The parameter an invalid request is refused for.
fn refused(prompt: &PromptInput, g: GenerationInput) -> (String, String) {
    match validator().validate(prompt, g) {
        Ok(_) => panic!("accepted"),
        Err(ApiError::InvalidParam { param, message }) => (param, message),
        Err(ApiError::ContextLength { param, message }) => (param.into(), message),
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

#[test]
fn defaults_fill_in_and_plain_prompts_get_bos() {
    let v = validator()
        .validate(&text("a b c"), GenerationInput::default())
        .unwrap();
    assert_eq!(v.prompt(), &[1, 3, 4, 5]);
    assert_eq!((v.params().temperature, v.params().top_p), (1.0, 1.0));
    assert_eq!(v.params().prompt_len, 4);
    // No max_tokens: all the room the context leaves.
    assert_eq!(v.criteria().max_tokens, 8);
    assert_eq!(v.criteria().eos_token_ids, vec![2]);
    assert_eq!((v.n(), v.logprobs()), (1, false));
}

#[test]
fn each_range_names_its_parameter_and_bound() {
    let cases: Vec<(GenerationInput, &str, &str)> = vec![
        (
            GenerationInput {
                temperature: Some(2.5),
                ..Default::default()
            },
            "temperature",
            "[0, 2]",
        ),
        (
            GenerationInput {
                top_p: Some(0.0),
                ..Default::default()
            },
            "top_p",
            "(0, 1]",
        ),
        (
            GenerationInput {
                top_k: Some(-2),
                ..Default::default()
            },
            "top_k",
            "-1, 0",
        ),
        (
            GenerationInput {
                min_p: Some(1.5),
                ..Default::default()
            },
            "min_p",
            "[0, 1]",
        ),
        (
            GenerationInput {
                priority: Some(1 << 40),
                ..Default::default()
            },
            "priority",
            "[-2147483648, 2147483647]",
        ),
        (
            GenerationInput {
                repetition_penalty: Some(0.0),
                ..Default::default()
            },
            "repetition_penalty",
            "(0, 10]",
        ),
        (
            GenerationInput {
                frequency_penalty: Some(-3.0),
                ..Default::default()
            },
            "frequency_penalty",
            "[-2, 2]",
        ),
        (
            GenerationInput {
                presence_penalty: Some(2.5),
                ..Default::default()
            },
            "presence_penalty",
            "[-2, 2]",
        ),
        (
            GenerationInput {
                n: Some(5),
                ..Default::default()
            },
            "n",
            "[1, 4]",
        ),
        (
            GenerationInput {
                logprobs: Some(6),
                ..Default::default()
            },
            "top_logprobs",
            "[0, 5]",
        ),
        (
            GenerationInput {
                stop: vec!["x".into(); 3],
                ..Default::default()
            },
            "stop",
            "up to 2",
        ),
        (
            GenerationInput {
                stop: vec![String::new()],
                ..Default::default()
            },
            "stop",
            "empty",
        ),
        (
            GenerationInput {
                logit_bias: vec![("6".into(), 1.0)],
                ..Default::default()
            },
            "logit_bias",
            "below 6",
        ),
        (
            GenerationInput {
                logit_bias: vec![("3".into(), 101.0)],
                ..Default::default()
            },
            "logit_bias",
            "[-100, 100]",
        ),
        (
            GenerationInput {
                max_tokens: Some(0),
                ..Default::default()
            },
            "max_tokens",
            "at least 1",
        ),
    ];
    for (g, param, bound) in cases {
        let (got, message) = refused(&text("a"), g);
        assert_eq!(got, param, "{message}");
        assert!(message.contains(bound), "{param}: {message}");
    }
}

#[test]
fn limits_on_the_prompt_and_the_context_name_the_prompt_field() {
    let nine = "a ".repeat(8);
    let (param, message) = refused(&text(&nine), GenerationInput::default());
    assert_eq!(param, "prompt");
    assert!(
        message.contains("9 tokens, more than the limit of 8"),
        "{message}"
    );
    let tgi = PromptInput::text("inputs", "a b");
    let g = GenerationInput {
        max_tokens: Some(10),
        ..Default::default()
    };
    let (param, message) = refused(&tgi, g);
    assert_eq!(param, "inputs");
    assert!(
        message.contains("maximum context length is 12"),
        "{message}"
    );
    let (param, _) = refused(&PromptInput::Tokens(vec![3, 9]), GenerationInput::default());
    assert_eq!(param, "prompt");
    let (param, message) = refused(&PromptInput::Tokens(vec![]), GenerationInput::default());
    assert_eq!(
        (param.as_str(), message.as_str()),
        ("prompt", "the prompt is empty")
    );
}

#[test]
fn logprob_entries_are_bounded_by_n_tokens_and_alternatives() {
    // 2 x 4 x (1 + 4) = 40 entries: at the limit.
    let g = |max_tokens| GenerationInput {
        n: Some(2),
        max_tokens: Some(max_tokens),
        logprobs: Some(4),
        ..Default::default()
    };
    assert!(validator().validate(&text("a"), g(4)).is_ok());
    let (param, message) = refused(&text("a"), g(5));
    assert_eq!(param, "top_logprobs");
    assert!(message.contains("= 50 entries"), "{message}");
}

#[test]
fn an_over_long_prompt_is_refused_before_its_grammar_is_compiled() {
    let grammar = Some(("response_format", GrammarSpec::Regex("a+".into())));
    let long = GenerationInput {
        grammar: grammar.clone(),
        ..Default::default()
    };
    let (param, _) = refused(&text(&"a ".repeat(9)), long);
    assert_eq!(param, "prompt");
    // A prompt that fits reaches the compiler (here: none for this model).
    let fits = GenerationInput {
        grammar,
        ..Default::default()
    };
    let (param, message) = refused(&text("a"), fits);
    assert_eq!(param, "response_format");
    assert!(message.contains("not available"), "{message}");
}

#[test]
fn ignore_eos_with_a_grammar_is_refused() {
    let g = GenerationInput {
        ignore_eos: true,
        grammar: Some(("tools", GrammarSpec::Regex("a".into()))),
        ..Default::default()
    };
    let (param, message) = refused(&text("a"), g);
    assert_eq!(param, "ignore_eos");
    assert!(message.contains("`tools`"), "{message}");
}
