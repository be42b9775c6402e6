//! Spans of generated tokens: which names user code can see, and where errors point.

use proc_macro2::{Group, Ident, Span, TokenStream, TokenTree};

/// The identifier of a generated item or variable. `Span::mixed_site()` makes local variables
/// (the job context, the decoded arguments) invisible to the user's code. Items still resolve as
/// if written by the user, which is why the expansion keeps its items out of the body's scope.
pub(crate) fn hidden(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// `tokens` moved to `location` for diagnostics, each keeping its own hygiene. rustc gives an
/// expression the span from its first token to its last, so an expression whose tokens are all
/// at one place in the user's code is reported there rather than at the attribute.
pub(crate) fn located_at(tokens: TokenStream, location: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Group(group) => {
                let mut moved = Group::new(group.delimiter(), located_at(group.stream(), location));
                moved.set_span(group.span().located_at(location));
                TokenTree::Group(moved)
            }
            mut other => {
                other.set_span(other.span().located_at(location));
                other
            }
        })
        .collect()
}
