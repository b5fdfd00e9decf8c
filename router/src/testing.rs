//! Helpers the unit tests share (compiled for tests only): a word-level tokenizer over a given
//! vocabulary, and text cut into the pieces a stream would deliver.

use tokenizers::models::wordlevel::WordLevel;
use tokenizers::Tokenizer;

/// A tokenizer whose token `i` is `words[i]`; `words[0]` stands for unknown words.
pub fn word_level(words: &[&str]) -> Tokenizer {
    let vocab = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token(words[0].into())
        .build()
        .expect("a word-level vocabulary");
    Tokenizer::new(model)
}

/// `text` in pieces of `step` bytes, each widened to end on a character boundary.
pub fn chunks(text: &str, step: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let mut j = (i + step).min(text.len());
        while !text.is_char_boundary(j) {
            j += 1;
        }
        out.push(&text[i..j]);
        i = j;
    }
    out
}
