//! What clients send ([`Request`]) and receive ([`Event`]), and why a submit can fail.

use ferrum_model::sampler::SamplingParams;

/// Engine-assigned id of a submitted request, unique for the engine's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "req-{}", self.0)
    }
}

/// One generation request: a tokenized prompt and how to continue it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt token ids (already templated and tokenized); must not be empty.
    pub prompt: Vec<u32>,
    /// Sampling parameters, validated at submit.
    pub params: SamplingParams,
    /// Most tokens to generate (>= 1); reaching it finishes with [`FinishReason::Length`].
    pub max_tokens: usize,
    /// Extra token ids that finish the request like EOS (not shown in the text).
    pub stop_token_ids: Vec<u32>,
    /// Strings that finish the request; the matched stop string is not shown.
    pub stop: Vec<String>,
    /// Keep generating past EOS tokens (benchmarks).
    pub ignore_eos: bool,
    /// Attach log-probabilities (and `params.top_logprobs` alternatives) to each token.
    pub logprobs: bool,
    /// Tenant, for fairness policies and optional cache partitioning.
    pub tenant: Option<String>,
    /// End user, for fairness policies.
    pub user: Option<String>,
    /// Agent program / session id, for policies that keep a program's turns together.
    pub program: Option<String>,
    /// Speculative decoding method for this request; `None` uses the engine's default.
    pub speculative: Option<crate::spec::SpecMethod>,
    /// Tool the program waits on after this turn (for retention TTL prediction).
    pub tool: Option<String>,
}

impl Request {
    /// A greedy request for `prompt` generating at most `max_tokens` tokens.
    pub fn new(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Request {
            prompt,
            params: SamplingParams::default(),
            max_tokens,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: false,
            tenant: None,
            user: None,
            program: None,
            speculative: None,
            tool: None,
        }
    }
}

/// Log-probability of a generated token and its most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// Log-probability of the generated token.
    pub logprob: f32,
    /// `(token, logprob)` of the most likely tokens, best first.
    pub top: Vec<(u32, f32)>,
}

/// Why a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The client cancelled (or dropped its receiver).
    Cancelled,
    /// The model failed; the message says why.
    Error(String),
}

/// Token counts of a finished request, for billing and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Generated tokens, including a final stop token.
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache when the request was first admitted.
    pub cached_tokens: usize,
}

/// What a request's stream carries, in order: zero or more `Token`s then one `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One generated token.
    Token {
        /// The token id.
        id: u32,
        /// New visible text: whole UTF-8 characters only, held back while it could be the
        /// start of a stop string; empty for EOS / stop tokens.
        text: String,
        /// Present when the request asked for logprobs.
        logprob: Option<TokenLogprob>,
    },
    /// The request ended; no more events follow.
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
}

/// Why a request was refused at submit (caller error or overload, never a model failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The prompt has no tokens.
    #[error("prompt is empty")]
    EmptyPrompt,
    /// `max_tokens` is 0.
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    /// A prompt token is not in the model's vocabulary.
    #[error("prompt token {token} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        /// The offending token id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// Sampling parameters are invalid.
    #[error("invalid sampling parameters: {0}")]
    InvalidParams(String),
    /// Prompt plus `max_tokens` exceeds the model's context length.
    #[error("prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds max_model_len {max_model_len}")]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Requested completion tokens.
        max_tokens: usize,
        /// The limit.
        max_model_len: usize,
    },
    /// Even alone the request would need more KV blocks than the pool has.
    #[error("request needs {needed} KV blocks but the pool has only {available}; lower max_tokens or the prompt length")]
    TooManyBlocks {
        /// Blocks the request needs at its longest.
        needed: usize,
        /// Blocks in the whole pool.
        available: usize,
    },
    /// The waiting queue is full; retry later.
    #[error("engine queue is full ({0} requests waiting)")]
    QueueFull(usize),
    /// The engine loop has stopped.
    #[error("engine has shut down")]
    ShutDown,
}
