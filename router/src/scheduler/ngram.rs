//! Where n-gram speculation's proposals come from: a sequence's [`Copier`], which follows the
//! place its output is copying from and learns the edits the output makes to it, and the
//! n-gram lookup ([`ngram_source`]) that finds such a place.
//!
//! A sequence that copies (a function rewritten with one change, a quoted passage) proposes
//! the tokens after its place in the source for as long as everything it wrote since matches
//! that source. Repetitive text (twelve lines of one pattern) has many earlier occurrences of
//! any short suffix, and the latest is often the wrong line; the place followed needs no
//! lookup. Where a proposal is rejected, the token the sequence wrote instead of the source's
//! is learned as an edit (the source's `orders`, the output's `purchases`) and applied to later
//! proposals, until a proposal it changed is rejected in turn. With the edit, the output still
//! matches the source, and the copy goes on from the same place. Nothing here can change an
//! output: proposals are only verified.

/// Most edits a sequence keeps (the oldest is dropped).
const MAX_EDITS: usize = 16;

/// One sequence's copying state.
#[derive(Debug, Default)]
pub struct Copier {
    /// `(source, at)`: output position `at` was proposed from `tokens[source]`.
    place: Option<(usize, usize)>,
    /// The last proposal's tokens as the source has them (before edits).
    last: Vec<u32>,
    /// `(source token, the token written instead)`, oldest first.
    edits: Vec<(u32, u32)>,
}

impl Copier {
    /// Up to `k` proposals for the token after `tokens`: the continuation of the place being
    /// followed when everything written since matches it, else of the longest suffix (of
    /// `max` down to `min` tokens) that occurred before; edits applied. Empty: none.
    pub fn propose(&mut self, tokens: &[u32], min: usize, max: usize, k: usize) -> Vec<u32> {
        let len = tokens.len();
        let from = self
            .follow(tokens)
            .or_else(|| ngram_source(tokens, min, max));
        self.place = from.map(|f| (f, len));
        self.last = from.map_or_else(Vec::new, |f| tokens[f..(f + k).min(len)].to_vec());
        self.last.iter().map(|&t| self.edit(t)).collect()
    }

    /// What verifying the last proposal gave: `accepted` of its tokens were kept, and `next`
    /// is the token the sequence wrote after them. A rejection teaches the edit from the
    /// source's token to `next` (or unlearns one that `next` contradicts).
    pub fn verified(&mut self, accepted: usize, next: Option<u32>) {
        let (Some(&source), Some(written)) = (self.last.get(accepted), next) else {
            return;
        };
        self.edits.retain(|&(from, _)| from != source);
        if written != source {
            if self.edits.len() == MAX_EDITS {
                self.edits.remove(0);
            }
            self.edits.push((source, written));
        }
    }

    /// `t` with the learned edit applied.
    fn edit(&self, t: u32) -> u32 {
        (self.edits.iter())
            .find(|&&(from, _)| from == t)
            .map_or(t, |&(_, to)| to)
    }

    /// Where the followed place has got to, if every token written since it was set matches
    /// the source there (edits applied).
    fn follow(&self, tokens: &[u32]) -> Option<usize> {
        let (source, at) = self.place?;
        let written = tokens.get(at..)?;
        let matches =
            (written.iter().enumerate()).all(|(i, &t)| t == self.edit(tokens[source + i]));
        let next = source + written.len();
        (matches && next < tokens.len()).then_some(next)
    }
}

/// Where the tokens that followed the latest earlier occurrence of the longest suffix of
/// `tokens` (of `max` down to `min` tokens) start; `None` when no such suffix occurred before.
pub fn ngram_source(tokens: &[u32], min: usize, max: usize) -> Option<usize> {
    let len = tokens.len();
    for n in (min.max(1)..=max).rev() {
        if n >= len {
            continue;
        }
        let suffix = &tokens[len - n..];
        // Latest start `i` of an earlier occurrence (it may overlap the suffix, not be it).
        if let Some(i) = (0..len - n).rev().find(|&i| &tokens[i..i + n] == suffix) {
            return Some(i + n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Up to `k` tokens after [`ngram_source`]'s place.
    fn ngram_lookup(tokens: &[u32], min: usize, max: usize, k: usize) -> Vec<u32> {
        ngram_source(tokens, min, max).map_or_else(Vec::new, |from| {
            tokens[from..(from + k).min(tokens.len())].to_vec()
        })
    }

    #[test]
    fn the_longest_suffix_seen_before_proposes_what_followed_it() {
        // "a b c d x a b c" -> after "a b c" came "d x".
        let t = [1, 2, 3, 4, 9, 1, 2, 3];
        assert_eq!(ngram_lookup(&t, 1, 3, 2), [4, 9]);
        // The proposal stops at the end of the tokens.
        assert_eq!(ngram_lookup(&t, 1, 3, 10), [4, 9, 1, 2, 3]);
        // The latest occurrence wins.
        let t = [5, 6, 1, 5, 7, 5];
        assert_eq!(ngram_lookup(&t, 1, 2, 1), [7]);
        // No suffix occurred before: nothing.
        assert!(ngram_lookup(&[1, 2, 3], 1, 3, 4).is_empty());
        assert!(ngram_lookup(&[1, 2, 3, 1, 2], 3, 3, 4).is_empty());
        // A run proposes more of itself.
        assert_eq!(ngram_lookup(&[7, 7, 7], 1, 2, 3), [7]);
    }

    /// A source of two lines of one pattern (`L a x ;` and `L b x ;`), then the output.
    const SOURCE: [u32; 8] = [10, 1, 50, 99, 10, 2, 50, 99];

    #[test]
    fn a_copy_follows_its_place_where_the_latest_match_is_another_line() {
        let mut c = Copier::default();
        // The output has copied the first line and started the second: "L a x ; L".
        let mut t = SOURCE.to_vec();
        t.extend([10, 1, 50, 99, 10]);
        // Lookup: the latest "99 10" is the output's own first line, followed by "1".
        assert_eq!(c.propose(&t, 1, 2, 2), [1, 50]);
        // The sequence writes "2" instead (the second line).
        c.verified(0, Some(2));
        t.push(2);
        // It learned 1 -> 2 and follows its place: the rest of that line, edited.
        assert_eq!(c.propose(&t, 1, 2, 3), [50, 99, 10]);
        // All kept, and the next token matches the source too: the place moves along.
        c.verified(3, Some(2));
        t.extend([50, 99, 10, 2]);
        assert_eq!(c.follow(&t), Some(14));
        assert_eq!(c.propose(&t, 1, 2, 2), [50, 99]);
    }

    #[test]
    fn a_learned_edit_renames_the_source_until_contradicted() {
        let mut c = Copier::default();
        // Source "f ( orders ) : sum ( orders )", output so far "f (".
        let mut t = vec![7, 8, 30, 9, 6, 5, 8, 30, 9, 7, 8];
        assert_eq!(c.propose(&t, 1, 2, 3), [30, 9, 6]);
        // The sequence writes "purchases" (31) for "orders" (30).
        c.verified(0, Some(31));
        t.push(31);
        assert_eq!(c.propose(&t, 1, 2, 5), [9, 6, 5, 8, 31], "renamed ahead");
        // Here it keeps "orders" after all: the edit is unlearned.
        c.verified(4, Some(30));
        t.extend([9, 6, 5, 8, 30]);
        assert_eq!(c.propose(&t, 1, 2, 3), [9, 7, 8]);
        assert_eq!(c.edit(30), 30);
    }

    #[test]
    fn a_place_the_output_left_falls_back_to_lookup() {
        let mut c = Copier::default();
        let mut t = vec![1, 2, 3, 4, 5, 9, 1, 2];
        assert_eq!(c.propose(&t, 1, 2, 2), [3, 4]);
        // The sequence went elsewhere twice (a plain step between): no edit could explain it.
        c.verified(0, Some(6));
        t.extend([6, 7]);
        assert_eq!(c.follow(&t), None);
        // Lookup takes over: nothing earlier ends in "6 7" or "7".
        assert!(c.propose(&t, 1, 2, 2).is_empty());
    }
}
