//! Task text for the policy's optional text prefix: a Hugging Face `tokenizer.json` turns the task
//! description into ids, folded into the policy's `text_vocab_size`.

use crate::{Error, Result};
use std::path::Path;

/// A task-text tokenizer bound to the policy's text vocabulary size.
pub struct TaskTokenizer {
    inner: tokenizers::Tokenizer,
    text_vocab_size: usize,
    max_len: usize,
}

impl TaskTokenizer {
    /// Loads `tokenizer.json`; ids are taken modulo `text_vocab_size` (so a large tokenizer can feed
    /// a small embedding table) and sequences are padded or cut to `max_len`, which keeps a batch
    /// rectangular.
    pub fn from_file(path: &Path, text_vocab_size: usize, max_len: usize) -> Result<Self> {
        if text_vocab_size == 0 || max_len == 0 {
            return Err(Error::Invalid("text_vocab_size and max_len must be positive".into()));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Invalid(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        Ok(Self { inner, text_vocab_size, max_len })
    }

    /// Ids of `text`, exactly `max_len` of them (padding id 0 after the text).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Invalid(format!("tokenizing {text:?}: {e}")))?;
        let mut ids: Vec<u32> =
            enc.get_ids().iter().take(self.max_len).map(|&i| i % self.text_vocab_size as u32).collect();
        ids.resize(self.max_len, 0);
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_padded_and_folded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"[UNK]":0,"build":1,"a":2,"tower":3,"bridge":7},"unk_token":"[UNK]"}}"#;
        std::fs::write(&path, json).unwrap();
        let t = TaskTokenizer::from_file(&path, 5, 4).unwrap();
        assert_eq!(t.encode("build a tower").unwrap(), vec![1, 2, 3, 0]);
        assert_eq!(t.encode("build a bridge now please").unwrap(), vec![1, 2, 2, 0]);
        assert!(TaskTokenizer::from_file(&dir.path().join("missing.json"), 5, 4).is_err());
    }
}
