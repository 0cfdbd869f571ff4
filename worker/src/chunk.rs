//! Splitting text into chunks measured in the embedding model's own tokens.
//!
//! The embedder reads at most 256 tokens per text (`[CLS]` and `[SEP]` included) and ignores the
//! rest, so chunks are sized with the model's tokenizer, not in characters: a chunk of at most 250
//! tokens is embedded whole. Neighbouring chunks share a few tokens so that a sentence cut at a
//! boundary still appears intact in one of them. Splitting prefers paragraph, then sentence, then
//! word boundaries ([`text_splitter::TextSplitter`]).

use text_splitter::{ChunkConfig, TextSplitter};
use tokenizers::Tokenizer;

/// Chunk sizes, in tokens as the model's tokenizer counts them (without `[CLS]`/`[SEP]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkerOptions {
    /// Largest chunk. 250 leaves room for `[CLS]` and `[SEP]` within the model's 256.
    pub max_tokens: usize,
    /// Most tokens consecutive chunks share; must be smaller than `max_tokens`. The overlap is
    /// made of whole pieces at the level where the split happened (sentences, words), so it can
    /// be smaller, and is empty where chunks break between paragraphs longer than it.
    pub overlap_tokens: usize,
    /// Most tokens one document may have; [`Chunker::split_document`] refuses longer ones.
    pub max_document_tokens: usize,
}

impl Default for ChunkerOptions {
    fn default() -> Self {
        Self {
            max_tokens: 250,
            overlap_tokens: 32,
            max_document_tokens: 262_144,
        }
    }
}

/// A document longer than [`ChunkerOptions::max_document_tokens`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{tokens} tokens; workers index documents of at most {max} tokens (chunking.max_document_tokens)")]
pub struct TooLong {
    pub tokens: usize,
    pub max: usize,
}

/// Why a [`Chunker`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunker options: {0}")]
    InvalidOptions(String),
}

/// Splits documents into overlapping chunks that fit the embedding model.
pub struct Chunker {
    splitter: TextSplitter<Tokenizer>,
    /// The same tokenizer, for counting a whole text.
    tokenizer: Tokenizer,
    max_tokens: usize,
    max_document_tokens: usize,
}

impl Chunker {
    /// A chunker counting with `tokenizer` (normally [`sluice_embed::Embedder::tokenizer`]).
    /// Padding and truncation are switched off on its copy, since either would miscount.
    pub fn new(tokenizer: &Tokenizer, options: ChunkerOptions) -> Result<Chunker, ChunkError> {
        let ChunkerOptions {
            max_tokens,
            overlap_tokens,
            max_document_tokens,
        } = options;
        if max_tokens == 0 {
            return Err(ChunkError::InvalidOptions(
                "max_tokens must be at least 1".into(),
            ));
        }
        if overlap_tokens >= max_tokens {
            return Err(ChunkError::InvalidOptions(format!(
                "overlap_tokens ({overlap_tokens}) must be smaller than max_tokens ({max_tokens}), \
                 or every chunk would repeat the previous one"
            )));
        }

        let mut tokenizer = tokenizer.clone();
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| ChunkError::InvalidOptions(format!("tokenizer: {e}")))?;

        let config = ChunkConfig::new(max_tokens)
            .with_overlap(overlap_tokens)
            .map_err(|e| ChunkError::InvalidOptions(e.to_string()))?
            .with_sizer(tokenizer.clone());
        Ok(Chunker {
            splitter: TextSplitter::new(config),
            tokenizer,
            max_tokens,
            max_document_tokens,
        })
    }

    /// Tokens in `text` as the model counts them (without `[CLS]`/`[SEP]`); text the tokenizer
    /// rejects counts as 0 (it yields no chunks either).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenizer
            .encode_fast(text, false)
            .map(|encoding| encoding.len())
            .unwrap_or(0)
    }

    /// The chunks of a document's text, after checking that it is not too long to index (the
    /// count costs one tokenizer pass, bounded by the gateway's text limit).
    pub fn split_document(&self, text: &str) -> Result<Vec<String>, TooLong> {
        let tokens = self.count_tokens(text);
        if tokens > self.max_document_tokens {
            return Err(TooLong {
                tokens,
                max: self.max_document_tokens,
            });
        }
        // What the model will embed (chunk overlaps aside).
        metrics::counter!("sluice_worker_tokens_chunked_total").increment(tokens as u64);
        // Most documents are one chunk: the count says so, and the splitter, which measures
        // candidate chunks with the tokenizer again and again, is not needed for them.
        if tokens <= self.max_tokens {
            let whole = text.trim();
            return Ok(if whole.is_empty() {
                Vec::new()
            } else {
                vec![whole.to_owned()]
            });
        }
        Ok(self.split(text))
    }

    /// The chunks of `text`, in order, trimmed of surrounding whitespace; none for blank text.
    pub fn split(&self, text: &str) -> Vec<String> {
        self.splitter
            .chunks(text)
            .map(str::trim)
            .filter(|chunk| !chunk.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The model's tokenizer, from `SLUICE_MODEL_DIR` or `~/.cache/sluice/model`. Tests fail
    /// (not skip) without it: CI installs the model before running them.
    fn tokenizer() -> Tokenizer {
        let dir = match std::env::var_os("SLUICE_MODEL_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME").expect("HOME must be set"))
                .join(".cache/sluice/model"),
        };
        let path = dir.join("tokenizer.json");
        Tokenizer::from_file(&path).unwrap_or_else(|e| {
            panic!(
                "the chunking tests need {} (run deploy/dev/install): {e}",
                path.display()
            )
        })
    }

    /// Tokens in `text`, counted with neither the padding nor the truncation (at 128) that
    /// tokenizer.json configures.
    fn count(tokenizer: &Tokenizer, text: &str) -> usize {
        let mut plain = tokenizer.clone();
        plain.with_padding(None);
        plain.with_truncation(None).unwrap();
        plain.encode_fast(text, false).unwrap().len()
    }

    /// A few thousand tokens of varied prose, in paragraphs separated by `separator`.
    fn long_text(separator: &str) -> String {
        let sentences = [
            "Kafka keeps every record in an append-only log split into partitions.",
            "Consumers in the same group divide the partitions between them.",
            "A transactional producer writes to several partitions atomically, or not at all.",
            "Qdrant stores vectors alongside a payload that filters can match.",
            "Cosine similarity compares the directions of two vectors and ignores their lengths.",
            "The gateway validates each document against its Avro schema before accepting it.",
            "Chunks overlap slightly so that a sentence cut in two still appears whole somewhere.",
            "Embedding models read a limited number of tokens and silently drop the rest.",
        ];
        (0..40)
            .map(|paragraph| {
                (0..6)
                    .map(|i| sentences[(paragraph * 3 + i * 5) % sentences.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join(separator)
    }

    #[test]
    fn long_text_becomes_chunks_within_the_limit() {
        // As loaded, with tokenizer.json's padding and truncation: the chunker must drop both.
        let tokenizer = tokenizer();
        assert!(tokenizer.get_truncation().is_some() && tokenizer.get_padding().is_some());
        let options = ChunkerOptions::default();
        let chunker = Chunker::new(&tokenizer, options.clone()).unwrap();
        let text = long_text("\n\n");
        assert!(count(&tokenizer, &text) > 3 * options.max_tokens);

        let chunks = chunker.split(&text);
        assert!(chunks.len() >= 4, "only {} chunks", chunks.len());
        for chunk in &chunks {
            let tokens = count(&tokenizer, chunk);
            assert!(tokens <= options.max_tokens, "chunk of {tokens} tokens");
            // Filling chunks well: a split every few sentences would multiply the embedding work.
            assert!(tokens > options.max_tokens / 2 || chunk == chunks.last().unwrap());
            assert!(!chunk.is_empty() && chunk.trim() == chunk);
        }
    }

    #[test]
    fn consecutive_chunks_overlap() {
        let tokenizer = tokenizer();
        let options = ChunkerOptions::default();
        let chunker = Chunker::new(&tokenizer, options.clone()).unwrap();
        // One long paragraph: chunks break between sentences, which fit in the overlap.
        let chunks = chunker.split(&long_text(" "));
        assert!(chunks.len() >= 4, "only {} chunks", chunks.len());
        for pair in chunks.windows(2) {
            // The next chunk starts inside the previous one: a suffix of it begins the next.
            let shared = (1..=pair[1].len())
                .filter(|&n| pair[1].is_char_boundary(n))
                .filter(|&n| pair[0].ends_with(&pair[1][..n]))
                .max()
                .unwrap_or_else(|| panic!("no overlap between\n{:?}\nand\n{:?}", pair[0], pair[1]));
            let tokens = count(&tokenizer, &pair[1][..shared]);
            assert!(
                tokens <= options.overlap_tokens,
                "overlap of {tokens} tokens"
            );
            assert!(count(&tokenizer, &pair[0]) <= options.max_tokens);
        }
    }

    #[test]
    fn short_text_is_one_chunk() {
        let chunker = Chunker::new(&tokenizer(), ChunkerOptions::default()).unwrap();
        assert_eq!(
            chunker.split("  A man is eating food.\n"),
            vec!["A man is eating food."]
        );
    }

    #[test]
    fn documents_over_the_token_limit_are_refused_before_splitting() {
        let options = ChunkerOptions {
            max_document_tokens: 1000,
            ..ChunkerOptions::default()
        };
        let chunker = Chunker::new(&tokenizer(), options).unwrap();
        let long = "word ".repeat(1001);
        assert_eq!(
            chunker.split_document(&long),
            Err(TooLong {
                tokens: 1001,
                max: 1000
            })
        );
        assert!(chunker.split_document(&"word ".repeat(1000)).is_ok());
    }

    #[test]
    fn a_document_that_fits_is_chunked_as_the_splitter_would() {
        let options = ChunkerOptions {
            max_tokens: 40,
            overlap_tokens: 8,
            ..ChunkerOptions::default()
        };
        let chunker = Chunker::new(&tokenizer(), options).unwrap();
        let text = long_text("\n\n");
        // Every length around the limit, from either end of the text, with the surrounding
        // whitespace the splitter trims.
        let words: Vec<&str> = text.split(' ').collect();
        let mut fitting = 0;
        for n in 1..=60 {
            for piece in [words[..n].join(" "), words[words.len() - n..].join(" ")] {
                let piece = format!("\n {piece}\t ");
                let fits = chunker.count_tokens(&piece) <= 40;
                fitting += usize::from(fits);
                assert_eq!(
                    chunker.split_document(&piece).unwrap(),
                    chunker.split(&piece),
                    "{piece:?}"
                );
            }
        }
        assert!((10..110).contains(&fitting), "{fitting} of 120 pieces fit");
        assert!(chunker.split_document(" \n ").unwrap().is_empty());
    }

    #[test]
    fn blank_text_has_no_chunks() {
        let chunker = Chunker::new(&tokenizer(), ChunkerOptions::default()).unwrap();
        assert!(chunker.split("").is_empty());
        assert!(chunker.split(" \n\t \n ").is_empty());
    }

    #[test]
    fn overlap_must_be_smaller_than_chunk() {
        let options = ChunkerOptions {
            max_tokens: 100,
            overlap_tokens: 100,
            ..ChunkerOptions::default()
        };
        let error = Chunker::new(&tokenizer(), options).err().unwrap();
        let message = error.to_string();
        assert!(message.contains("overlap_tokens (100)"), "{message}");
        assert!(message.contains("max_tokens (100)"), "{message}");
    }
}
