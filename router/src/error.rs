//! Typed errors returned when a route cannot be registered.

use thiserror::Error;

/// Why a route pattern could not be inserted.
///
/// Every variant names the offending route; a conflict also names the route already registered.
/// A failed insertion leaves the router exactly as it was before the call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InsertError {
    /// The new route matches exactly the same paths as a route already registered
    /// (same static segments, parameters and catch-all in the same places).
    #[error("route `{route}` conflicts with the already registered route `{existing}`")]
    Conflict {
        /// The route that was being inserted.
        route: String,
        /// The registered route it collides with.
        existing: String,
    },
    /// The pattern is not well formed; `reason` says what is wrong.
    #[error("malformed route `{route}`: {reason}")]
    Malformed {
        /// The route that was being inserted.
        route: String,
        /// What is wrong with it.
        reason: MalformedReason,
    },
}

/// What makes a route pattern malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MalformedReason {
    /// Patterns are absolute paths and must begin with `/`.
    #[error("a route must begin with `/`")]
    MissingLeadingSlash,
    /// A `:` or `*` segment has no name after the sigil.
    #[error("a parameter or catch-all needs a name (`:id`, `*path`)")]
    EmptyParamName,
    /// A parameter name contains `:` or `*`.
    #[error("a parameter name cannot contain `:` or `*`")]
    InvalidParamName,
    /// Two parameters of one route share a name.
    #[error("two parameters share one name")]
    DuplicateParamName,
    /// A `*catchall` segment is followed by more segments.
    #[error("a catch-all (`*name`) must be the last segment")]
    CatchAllNotLast,
    /// The pattern contains `?` or `#`, which never appear in a request path.
    #[error("a route cannot contain `?` or `#`; query strings are not part of routing")]
    QueryOrFragment,
    /// `:` or `*` inside a segment (`/user_:id`, `/files*path`): other routers read it as a
    /// parameter, this one only at the start of a segment.
    #[error(
        "`:` and `*` start a parameter only at the start of a segment (`/user/:id`, `/files/*path`); for literal text write `\\:` or `\\*` (`/v1/projects\\:batchGet`)"
    )]
    ParamInsideSegment,
    /// A `\` not followed by `:` or `*`.
    #[error("`\\` escapes only `:` and `*`")]
    BadEscape,
}

/// Why [`Router::at`](crate::Router::at) found no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MatchError {
    /// No registered route matches the path.
    #[error("no route matches the path")]
    NotFound,
}
