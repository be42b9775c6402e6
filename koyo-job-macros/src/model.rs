//! The job function as the expansion needs it, and the rules its signature must follow.
//!
//! A job's arguments are serialized when it is enqueued and deserialized in another process, so
//! the signature is checked for what cannot survive that trip (borrows, `impl Trait`, generics,
//! `self`) before any code is generated: the errors then name the fix instead of a trait bound.

use syn::visit_mut::VisitMut;
use syn::{
    AttrStyle, Attribute, Block, FnArg, Ident, ItemFn, Lifetime, Pat, PatIdent, PatType, ReturnType,
    Signature, Token, Type, TypeImplTrait, TypeReference, Visibility,
};

use crate::errors::Errors;

/// serde implements `Serialize`/`Deserialize` for tuples of up to 16 elements, and a job's
/// arguments are stored as one tuple.
const MAX_ARGUMENTS: usize = 16;

pub(crate) struct JobFn {
    /// Outer attributes (doc comments, lints, …): they go on the generated stub.
    pub(crate) attrs: Vec<Attribute>,
    /// The body's own `#![…]` attributes: they stay inside the body.
    pub(crate) inner_attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    /// The signature as written, for the fallback stub emitted when the definition has errors.
    pub(crate) sig: Signature,
    pub(crate) args: Vec<JobArg>,
    pub(crate) body: Box<Block>,
    /// Whether `args` describes the whole signature (no signature errors were found).
    pub(crate) signature_ok: bool,
}

pub(crate) struct JobArg {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) mutability: Option<Token![mut]>,
    pub(crate) ident: Ident,
    pub(crate) ty: Box<Type>,
}

impl JobFn {
    pub(crate) fn from_item(item: ItemFn, errors: &mut Errors) -> JobFn {
        let ItemFn { attrs, vis, sig, block } = item;
        let (inner_attrs, attrs) = attrs.into_iter().partition(|a| matches!(a.style, AttrStyle::Inner(_)));
        let mut signature_errors = Errors::default();
        let args = check_signature(&sig, &mut signature_errors);
        let signature_ok = signature_errors.is_empty();
        if let Some(error) = signature_errors.into_error() {
            errors.push(error);
        }
        JobFn { attrs, inner_attrs, vis, sig, args, body: block, signature_ok }
    }

    pub(crate) fn ident(&self) -> &Ident {
        &self.sig.ident
    }

    pub(crate) fn output(&self) -> &ReturnType {
        &self.sig.output
    }
}

fn check_signature(sig: &Signature, errors: &mut Errors) -> Vec<JobArg> {
    if let Some(token) = &sig.constness {
        errors.spanned(token, "job functions cannot be `const`");
    }
    if sig.asyncness.is_none() {
        errors.spanned(sig.fn_token, "`#[define_job]` needs an `async fn`");
    }
    if let Some(token) = &sig.unsafety {
        errors.spanned(token, "job functions cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi, "job functions cannot be `extern`");
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(&sig.generics, "job functions cannot be generic: job arguments are stored by type");
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.spanned(where_clause, "job functions cannot be generic: job arguments are stored by type");
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "job functions cannot be variadic");
    }

    let mut args = Vec::new();
    for (index, input) in sig.inputs.iter().enumerate() {
        if index == MAX_ARGUMENTS {
            errors.spanned(
                input,
                format!(
                    "a job takes at most {MAX_ARGUMENTS} arguments (they are stored as one tuple): \
                     group some of them into a struct"
                ),
            );
        }
        match input {
            FnArg::Receiver(receiver) => {
                errors.spanned(receiver, "jobs cannot take `self`: define the job as a free function")
            }
            FnArg::Typed(typed) => {
                if let Some(arg) = check_argument(typed, errors) {
                    args.push(arg);
                }
            }
        }
    }
    args
}

fn check_argument(typed: &PatType, errors: &mut Errors) -> Option<JobArg> {
    let PatType { attrs, pat, ty, .. } = typed;
    for attr in attrs {
        if attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr") {
            errors.spanned(
                attr,
                "job arguments cannot be conditional: the stored argument list must not depend on the build",
            );
        }
    }
    let plain_name = match &**pat {
        Pat::Ident(PatIdent { by_ref: None, mutability, ident, subpat: None, .. }) => {
            Some((mutability, ident))
        }
        _ => {
            errors.spanned(pat, "job arguments must be plain names, like `user_id: i64`, not patterns");
            None
        }
    };
    let mut types = ArgumentType { problem: None };
    types.visit_type_mut(&mut ty.clone());
    if let Some(error) = types.problem {
        errors.push(error);
        return None;
    }
    let (mutability, ident) = plain_name?;
    Some(JobArg { attrs: attrs.clone(), mutability: *mutability, ident: ident.clone(), ty: ty.clone() })
}

/// Finds what in an argument's type cannot be stored: a borrow or an `impl Trait`. Stops at the
/// first one so an argument gets one error.
struct ArgumentType {
    problem: Option<syn::Error>,
}

impl ArgumentType {
    fn report(&mut self, error: syn::Error) {
        self.problem.get_or_insert(error);
    }
}

impl VisitMut for ArgumentType {
    fn visit_type_reference_mut(&mut self, reference: &mut TypeReference) {
        let owned = owned_equivalent(&reference.elem);
        self.report(syn::Error::new_spanned(
            &*reference,
            format!(
                "job arguments are stored, so they must be owned: use `{owned}` instead of `{}`",
                tokens_text(&*reference)
            ),
        ));
    }

    fn visit_type_impl_trait_mut(&mut self, impl_trait: &mut TypeImplTrait) {
        self.report(syn::Error::new_spanned(
            &*impl_trait,
            "job arguments are stored by type, so they cannot be `impl Trait`: name the concrete type",
        ));
    }

    fn visit_lifetime_mut(&mut self, lifetime: &mut Lifetime) {
        if lifetime.ident != "static" {
            self.report(syn::Error::new_spanned(
                &*lifetime,
                "job arguments are stored, so they cannot borrow: use an owned type without a lifetime",
            ));
        }
    }
}

/// The owned type to suggest in place of a borrow of `elem`.
fn owned_equivalent(elem: &Type) -> String {
    match elem {
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last().map(|s| s.ident.to_string()).unwrap_or_default();
            match last.as_str() {
                "str" => "String".to_owned(),
                "Path" => "PathBuf".to_owned(),
                "OsStr" => "OsString".to_owned(),
                "CStr" => "CString".to_owned(),
                _ => tokens_text(elem),
            }
        }
        Type::Slice(slice) => format!("Vec<{}>", tokens_text(&slice.elem)),
        _ => tokens_text(elem),
    }
}

/// Source-like text for a type, for error messages: `& [u8]` → `&[u8]`.
fn tokens_text(tokens: &impl quote::ToTokens) -> String {
    let text = tokens.to_token_stream().to_string();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        // proc_macro2 prints a space between every two tokens; keep only those between words.
        if c == ' ' {
            let prev = out.chars().last();
            let next = chars.peek().copied();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '\'');
            let after_lifetime =
                out.trim_end_matches(|c: char| c.is_alphanumeric() || c == '_').ends_with('\'');
            if word(prev) && word(next)
                || after_lifetime
                || prev == Some(',')
                || next == Some('+')
                || prev == Some('+')
            {
                out.push(' ');
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(ty: &str) -> String {
        owned_equivalent(&syn::parse_str(ty).unwrap())
    }

    #[test]
    fn owned_suggestions() {
        assert_eq!(owned("str"), "String");
        assert_eq!(owned("std::path::Path"), "PathBuf");
        assert_eq!(owned("[u8]"), "Vec<u8>");
        assert_eq!(owned("Vec<Option<u8>>"), "Vec<Option<u8>>");
        assert_eq!(owned("HashMap<String, u8>"), "HashMap<String, u8>");
        assert_eq!(tokens_text(&syn::parse_str::<Type>("&'static [u8]").unwrap()), "&'static [u8]");
        assert_eq!(
            tokens_text(&syn::parse_str::<Type>("&mut Box<dyn Fn(u8) + Send>").unwrap()),
            "&mut Box<dyn Fn(u8) + Send>"
        );
    }
}
