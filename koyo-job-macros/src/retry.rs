//! Rewrites `retry!(…)` in a job body into a `return` that records the retry on the job's context.
//!
//! `retry!` is only meaningful where that context is in scope and where `return` ends the job:
//! directly in the body. Closures, `async` blocks, `const` blocks and nested items are left alone,
//! so a `retry!` there reaches the public `macro_rules! retry`, whose `compile_error!` says why
//! (async-stream treats `yield` in closures the same way).

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::visit_mut::{self, VisitMut};
use syn::{Block, Expr, ExprAsync, ExprClosure, ExprConst, Item, Macro, Path, Stmt, Token};

use crate::errors::Errors;
use crate::spans::located_at;

/// Rewrites every `retry!` that belongs to the job in `body`. `ctx` is the (hidden) context
/// parameter of the body function; `krate` the path of the runtime crate.
pub(crate) fn rewrite_body(body: &mut Block, ctx: &Ident, krate: &Path, errors: &mut Errors) {
    let mut rewriter = RetryRewriter { ctx, krate, errors };
    rewriter.visit_block_mut(body);
}

struct RetryRewriter<'a> {
    ctx: &'a Ident,
    krate: &'a Path,
    errors: &'a mut Errors,
}

impl RetryRewriter<'_> {
    /// The replacement for one `path!(args)`, where `path` names `retry`.
    ///
    /// It is a block that imports `path` (as `_`) before returning: the user's `use
    /// koyo_job::retry;` is then used, not reported as an unused import, and a `retry!` that
    /// was never imported still fails to resolve, as it would without the attribute.
    ///
    /// A wrong invocation is reported and replaced by a placeholder that still evaluates the
    /// arguments, so that the rest of the body is checked (and nothing it uses looks unused).
    fn replacement(&mut self, path: &Path, args: TokenStream) -> TokenStream {
        let span = path.segments.last().map_or_else(Span::call_site, |s| s.ident.span());
        let span = Span::mixed_site().located_at(span);
        let (ctx, krate) = (self.ctx, self.krate);
        let import = quote_spanned!(span=> #[allow(unused_imports)] use #path as _;);
        let args = match Punctuated::<Expr, Token![,]>::parse_terminated.parse2(args) {
            Ok(args) => args,
            Err(error) => {
                self.errors.push(error);
                return quote_spanned!(span=> { #import ::core::unreachable!() });
            }
        };
        if args.len() > 2 {
            let extra: TokenStream = args.iter().skip(2).flat_map(|a| a.to_token_stream()).collect();
            self.errors.spanned(extra, "`retry!` takes at most two arguments: a delay and a reason");
            let args = args.iter();
            return quote_spanned!(span=> { #import let _ = (#(#args,)*); ::core::unreachable!() });
        }
        let rt = located_at(quote!(#krate::__private), span);
        let none = quote_spanned!(span=> ::core::option::Option::None);
        let mut args = args.into_iter();
        let delay = match args.next() {
            Some(delay) => quote_spanned!(span=> #rt::delay(#delay)),
            None => none.clone(),
        };
        let reason = match args.next() {
            Some(reason) => quote_spanned!(span=> #rt::reason(#reason)),
            None => none,
        };
        quote_spanned!(span=> {
            #import
            return #rt::retry(&#ctx, #delay, #reason)
        })
    }

    fn replace_macro(&mut self, mac: &Macro) -> Expr {
        let tokens = self.replacement(&mac.path, mac.tokens.clone());
        syn::parse2(tokens).expect("a block expression")
    }

    /// The token-level version of the rewrite, for `retry!` inside the input of another macro
    /// (`tokio::select! { … => retry!() }`, `vec![…]`), which syn cannot see as expressions.
    fn rewrite_tokens(&mut self, tokens: TokenStream) -> TokenStream {
        let input: Vec<TokenTree> = tokens.into_iter().collect();
        let mut out: Vec<TokenTree> = Vec::with_capacity(input.len());
        let mut i = 0;
        while i < input.len() {
            match &input[i] {
                TokenTree::Ident(ident) if ident == "retry" => {
                    if let (Some(TokenTree::Punct(bang)), Some(TokenTree::Group(group))) =
                        (input.get(i + 1), input.get(i + 2))
                        && bang.as_char() == '!'
                    {
                        let path_start = path_prefix_start(&out);
                        let original: Vec<TokenTree> =
                            out.drain(path_start..).chain(input[i..i + 3].iter().cloned()).collect();
                        let path = original[..original.len() - 2].iter().cloned().collect();
                        match syn::parse2::<Path>(path) {
                            Ok(path) => out.extend(self.replacement(&path, group.stream())),
                            // Not a path after all: leave the tokens to the other macro.
                            Err(_) => out.extend(original),
                        }
                        i += 3;
                        continue;
                    }
                    out.push(input[i].clone());
                }
                // Leave `async { … }`, `async move { … }` and `fn name(…) { … }` as they are: as in
                // the syntax tree, a `retry!` there does not belong to the job.
                TokenTree::Ident(ident) if ident == "async" || ident == "fn" => {
                    let end =
                        if ident == "async" { async_block_end(&input, i) } else { fn_item_end(&input, i) };
                    let end = end.unwrap_or(i + 1);
                    out.extend(input[i..end].iter().cloned());
                    i = end;
                    continue;
                }
                TokenTree::Group(group) => {
                    let mut rewritten = Group::new(group.delimiter(), self.rewrite_tokens(group.stream()));
                    rewritten.set_span(group.span());
                    out.push(TokenTree::Group(rewritten));
                }
                other => out.push(other.clone()),
            }
            i += 1;
        }
        out.into_iter().collect()
    }
}

/// Where the path in front of a `retry` token starts (`koyo_job::retry`, `::koyo_job::retry`),
/// as an index into the tokens already emitted.
fn path_prefix_start(out: &[TokenTree]) -> usize {
    let mut start = out.len();
    loop {
        let is_path_sep = start >= 2
            && matches!((&out[start - 2], &out[start - 1]),
                (TokenTree::Punct(a), TokenTree::Punct(b)) if a.as_char() == ':' && b.as_char() == ':');
        if !is_path_sep {
            return start;
        }
        start -= 2;
        match start.checked_sub(1).map(|i| &out[i]) {
            Some(TokenTree::Ident(_)) => start -= 1,
            // A leading `::`.
            _ => return start,
        }
    }
}

/// For `async { … }` or `async move { … }` starting at `start`: the index just past the block.
fn async_block_end(tokens: &[TokenTree], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if matches!(tokens.get(i), Some(TokenTree::Ident(ident)) if ident == "move") {
        i += 1;
    }
    match tokens.get(i) {
        Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => Some(i + 1),
        _ => None,
    }
}

/// For `fn name …` starting at `start`: the index just past its body (or its `;`). A `fn` not
/// followed by a name is a function pointer type, not an item.
fn fn_item_end(tokens: &[TokenTree], start: usize) -> Option<usize> {
    if !matches!(tokens.get(start + 1), Some(TokenTree::Ident(_))) {
        return None;
    }
    let offset = tokens[start..].iter().position(|t| match t {
        TokenTree::Group(g) => g.delimiter() == Delimiter::Brace,
        TokenTree::Punct(p) => p.as_char() == ';',
        _ => false,
    })?;
    Some(start + offset + 1)
}

fn is_retry(path: &Path) -> bool {
    path.segments.last().is_some_and(|s| s.ident == "retry" && s.arguments.is_none())
}

impl VisitMut for RetryRewriter<'_> {
    fn visit_expr_mut(&mut self, expr: &mut Expr) {
        if let Expr::Macro(m) = expr
            && is_retry(&m.mac.path)
        {
            let mut replacement = self.replace_macro(&m.mac);
            if let Expr::Block(block) = &mut replacement {
                block.attrs = std::mem::take(&mut m.attrs);
            }
            *expr = replacement;
            return;
        }
        visit_mut::visit_expr_mut(self, expr);
    }

    fn visit_stmt_mut(&mut self, stmt: &mut Stmt) {
        if let Stmt::Macro(m) = stmt
            && is_retry(&m.mac.path)
        {
            let mut replacement = self.replace_macro(&m.mac);
            if let Expr::Block(block) = &mut replacement {
                block.attrs = std::mem::take(&mut m.attrs);
            }
            *stmt = Stmt::Expr(replacement, m.semi_token);
            return;
        }
        visit_mut::visit_stmt_mut(self, stmt);
    }

    /// Any other macro: rewrite `retry!` inside its input tokens.
    fn visit_macro_mut(&mut self, mac: &mut Macro) {
        if !is_retry(&mac.path) {
            mac.tokens = self.rewrite_tokens(std::mem::take(&mut mac.tokens));
        }
    }

    fn visit_expr_closure_mut(&mut self, _: &mut ExprClosure) {}

    fn visit_expr_async_mut(&mut self, _: &mut ExprAsync) {}

    fn visit_expr_const_mut(&mut self, _: &mut ExprConst) {}

    fn visit_item_mut(&mut self, _: &mut Item) {}
}
