//! SentencePiece vocabularies from GGUF metadata (`tokenizer.ggml.model = llama`), encoded the way
//! llama.cpp does, as a `tokenizers` BPE model so that the rest of the server sees one type.
//!
//! llama.cpp's SentencePiece encoder starts from the text's characters (spaces written `▁`) and
//! repeatedly joins the adjacent pair whose concatenation is a vocabulary token with the highest
//! score (ties: the leftmost pair); a character that is no token becomes its UTF-8 byte tokens
//! (`<0xXX>`). A BPE whose merges are every split of every token into two tokens, ranked by the
//! joined token's score, does exactly that: BPE also applies the lowest-ranked applicable merge,
//! leftmost first. The one case where the two can differ is two *different* splits of one token
//! both applicable at once with a shared piece (BPE prefers the split listed first, llama.cpp the
//! leftmost); the fixtures in `tests/tokenizers.rs` pin the ids on real text.
//!
//! Decoding turns `▁` back into spaces and byte tokens into bytes; with `add_space_prefix` the
//! prefix added to each text fragment is removed again from the start of the decoded text.

use super::tok_err;
use crate::error::LoadError;
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::{DecoderWrapper, NormalizerWrapper, Tokenizer};

/// SentencePiece's visible space.
const SPACE: &str = "\u{2581}";

/// GGUF token type of the `<0xXX>` byte tokens.
pub(super) const TOKEN_TYPE_BYTE: i64 = 6;

/// What a SentencePiece vocabulary is made of, as the GGUF stores it.
pub(super) struct SpmVocab<'a> {
    pub tokens: &'a [String],
    pub scores: &'a [f32],
    pub types: &'a [i64],
    pub unknown: Option<u32>,
    pub add_space_prefix: bool,
}

/// Every way of writing each token as two shorter tokens, ordered as llama.cpp would prefer to
/// form them: by the joined token's score (highest first), then by its id, then by where the
/// split falls.
fn merges(vocab: &SpmVocab, ids: &HashMap<&str, u32>) -> Vec<(String, String)> {
    let mut joins: Vec<(f32, u32, usize)> = Vec::new();
    for (id, text) in vocab.tokens.iter().enumerate() {
        if vocab.types.get(id) == Some(&TOKEN_TYPE_BYTE) {
            continue;
        }
        for (k, _) in text.char_indices().skip(1) {
            if ids.contains_key(&text[..k]) && ids.contains_key(&text[k..]) {
                let score = vocab.scores.get(id).copied().unwrap_or(0.0);
                joins.push((score, id as u32, k));
            }
        }
    }
    joins.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    joins
        .into_iter()
        .map(|(_, id, k)| {
            let text = &vocab.tokens[id as usize];
            (text[..k].to_string(), text[k..].to_string())
        })
        .collect()
}

/// The tokenizer of a SentencePiece vocabulary; added tokens are the caller's.
pub(super) fn tokenizer(vocab: &SpmVocab) -> Result<Tokenizer, LoadError> {
    if vocab.scores.len() != vocab.tokens.len() {
        return Err(tok_err(format!(
            "{} scores for {} tokens",
            vocab.scores.len(),
            vocab.tokens.len()
        )));
    }
    // Where a text appears twice, the later id wins, as in llama.cpp's text-to-token map.
    let ids: HashMap<&str, u32> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let merges = merges(vocab, &ids);
    let bpe_vocab: tokenizers::models::bpe::Vocab =
        ids.iter().map(|(&t, &i)| (t.to_string(), i)).collect();
    let mut bpe = BPE::builder()
        .vocab_and_merges(bpe_vocab, merges)
        .byte_fallback(true);
    if let Some(unk) = vocab.unknown.and_then(|id| vocab.tokens.get(id as usize)) {
        bpe = bpe.unk_token(unk.clone());
    }
    let mut tokenizer = Tokenizer::new(bpe.build().map_err(tok_err)?);

    let space = Replace::new(" ", SPACE).map_err(tok_err)?;
    let normalizer: NormalizerWrapper = if vocab.add_space_prefix {
        tokenizers::normalizers::Sequence::new(vec![
            Prepend::new(SPACE.into()).into(),
            space.into(),
        ])
        .into()
    } else {
        space.into()
    };
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(tok_err)?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE, " ").map_err(tok_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if vocab.add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: characters, byte tokens for two bytes, and joined tokens whose scores
    /// decide the merge order.
    fn toy(add_space_prefix: bool) -> Tokenizer {
        let entries: &[(&str, f32, i64)] = &[
            ("<unk>", 0.0, 2),
            ("<0xE2>", 0.0, 6),
            ("<0x82>", 0.0, 6),
            ("<0xAC>", 0.0, 6),
            ("a", -10.0, 1),
            ("b", -10.0, 1),
            ("c", -10.0, 1),
            ("\u{2581}", -10.0, 1),
            ("ab", -3.0, 1),
            ("bc", -1.0, 1),
            ("abc", -2.0, 1),
            ("\u{2581}a", -5.0, 1),
        ];
        let tokens: Vec<String> = entries.iter().map(|e| e.0.to_string()).collect();
        let scores: Vec<f32> = entries.iter().map(|e| e.1).collect();
        let types: Vec<i64> = entries.iter().map(|e| e.2).collect();
        tokenizer(&SpmVocab {
            tokens: &tokens,
            scores: &scores,
            types: &types,
            unknown: Some(0),
            add_space_prefix,
        })
        .unwrap()
    }

    fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn the_highest_scoring_join_goes_first() {
        let tok = toy(false);
        // "bc" (-1) beats "ab" (-3), so "abc" is a + bc, which then joins to abc (-2).
        assert_eq!(ids(&tok, "abc"), vec![10]);
        // "ab" and a lone "a" ("ba" is no token).
        assert_eq!(ids(&tok, "aba"), vec![8, 4]);
        // Spaces are `▁`, joined by score too.
        assert_eq!(ids(&tok, "a a"), vec![4, 11]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes_and_decode_back() {
        let tok = toy(false);
        // '€' is E2 82 AC.
        assert_eq!(ids(&tok, "a€"), vec![4, 1, 2, 3]);
        assert_eq!(tok.decode(&[4, 1, 2, 3, 7, 5], false).unwrap(), "a€ b");
    }

    #[test]
    fn a_space_prefix_is_added_and_stripped_again() {
        let tok = toy(true);
        assert_eq!(ids(&tok, "a"), vec![11]);
        assert_eq!(tok.decode(&[11, 7, 5], false).unwrap(), "a b");
    }
}
