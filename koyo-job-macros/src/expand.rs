//! Turns a checked job definition into its stub function.
//!
//! For `#[define_job(queue = "mail")] pub async fn send_welcome(user_id: i64, email: String) -> R { BODY }`:
//!
//! ```text
//! pub fn send_welcome(user_id: i64, email: String) -> ::koyo_job::Job<(i64, String,)> {
//!     async fn __koyo_job_body(user_id: i64, email: String, ctx: JobContext) -> R { BODY with retry! rewritten }
//!     let args: (i64, String,) = (user_id, email,);
//!     {
//!         const _: () = assert_argument::<i64>();          // one per argument, at its type
//!         const _: () = assert_argument::<String>();
//!         fn run((arg0, arg1,): (i64, String,), ctx: JobContext) -> JobFuture {
//!             box_body(__koyo_job_body(arg0, arg1, ctx))
//!         }
//!         fn run_encoded(bytes: &[u8], ctx: JobContext) -> Result<JobFuture, DecodeError> {
//!             Ok(run(decode_args::<(i64, String,)>(bytes)?, ctx))
//!         }
//!         static DESCRIPTOR: JobDescriptor = JobDescriptor { name, queue, …, run: run_encoded };
//!         inventory::submit! { Registration(&DESCRIPTOR) }
//!         job(&DESCRIPTOR, run, args)
//!     }
//! }
//! ```
//!
//! (runtime items through `::koyo_job::__private`). The stub has no `#[must_use]` of its own:
//! `Job` is `#[must_use]` already, and with both, an unused call gets two warnings. Everything lives inside the stub, so a job
//! adds exactly one name to its module; `inventory::submit!` works there because it only defines
//! items (statics placed in the constructor section), which are hoisted out of the function.
//!
//! The nesting is deliberate. Identifiers with `Span::mixed_site()` hide local variables (`ctx`,
//! `args`) from the user's code, but not items, which resolve like the user's own names. The
//! user's body can see the items of the block it is defined in, so that block holds only the body
//! function, under a name no one writes; `run`, `run_encoded` and `DESCRIPTOR` sit in an inner
//! block that the body cannot see. Likewise the arguments are moved into a hidden tuple before
//! that inner block, so an argument called `run` still means the argument.

use proc_macro2::{Literal, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType};

use crate::args::{self, JobArgs};
use crate::errors::Errors;
use crate::fallback;
use crate::model::{JobArg, JobFn, hidden};
use crate::retry;

pub(crate) fn define_job(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = JobArgs::parse(attr, &mut errors);
    let item = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(item) => item,
        Err(error) => {
            let error = match syn::parse2::<syn::Item>(item.clone()) {
                Ok(other) => syn::Error::new_spanned(other, "`#[define_job]` goes on an `async fn`"),
                Err(_) => error,
            };
            errors.push(error);
            let errors = errors.into_error().map(|e| e.to_compile_error());
            // Keep the item so that its name still resolves; the build fails on the error.
            return quote!(#errors #item);
        }
    };
    let mut job = JobFn::from_item(item, &mut errors);
    if args.name.is_none() {
        check_default_name(&job, &mut errors);
    }
    let ctx = hidden("ctx");
    retry::rewrite_body(&mut job.body, &ctx, &args.krate, &mut errors);
    match errors.into_error() {
        None => expand(&args, &job, &ctx),
        Some(error) => fallback::stub(&args.krate, &job, error),
    }
}

/// The default name is `module_path!()::fn_name`. The module path is only known to the compiler
/// (the runtime checks it when the job is stored), but the function's own name can be checked now.
fn check_default_name(job: &JobFn, errors: &mut Errors) {
    let ident = job.ident();
    let name = syn::ext::IdentExt::unraw(ident).to_string();
    if let Some(bad) = name.chars().find(|&c| !args::is_name_char(c)) {
        errors.spanned(
            ident,
            format!(
                "this job would be stored under a name containing {bad:?}, but job names use only ASCII \
                 letters, digits, `_`, `.`, `:` and `-`: give it one with `#[define_job(name = \"…\")]`"
            ),
        );
    }
}

fn expand(args: &JobArgs, job: &JobFn, ctx: &syn::Ident) -> TokenStream {
    let krate = &args.krate;
    let rt = quote!(#krate::__private);
    let JobFn { attrs, inner_attrs, vis, body, .. } = job;
    let ident = job.ident();
    let fn_token = &job.sig.fn_token;
    let output = job.output();

    let body_fn = hidden("__koyo_job_body");
    let run = hidden("run");
    let run_encoded = hidden("run_encoded");
    let descriptor = hidden("DESCRIPTOR");
    let args_var = hidden("args");
    let bytes = hidden("bytes");

    let names: Vec<_> = job.args.iter().map(|arg| &arg.ident).collect();
    let types: Vec<_> = job.args.iter().map(|arg| &*arg.ty).collect();
    let values: Vec<_> = (0..job.args.len()).map(|i| hidden(&format!("arg{i}"))).collect();
    let tuple = quote!((#(#types,)*));
    let body_params = job.args.iter().map(|JobArg { attrs, mutability, ident, ty }| {
        quote!(#(#attrs)* #mutability #ident: #ty)
    });

    // Each argument type is checked on its own, so a type that cannot be stored is reported at
    // that argument rather than as an opaque tuple.
    let assertions = types.iter().map(|ty| {
        let span = ty.span();
        let rt = respanned(rt.clone(), span);
        quote_spanned!(span=> const _: () = #rt::assert_argument::<#ty>();)
    });

    // `box_body` is where the body's future must be `Send` and its output a `JobOutput`:
    // give the call the span of the return type (or of the name), so those errors point at the
    // signature instead of at the attribute.
    let signature_span = match output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => ident.span(),
    };
    let boxed = {
        let rt = respanned(rt.clone(), signature_span);
        quote_spanned!(signature_span=> #rt::box_body(#body_fn(#(#values,)* #ctx)))
    };

    let body_tokens = {
        let mut tokens = TokenStream::new();
        body.brace_token.surround(&mut tokens, |tokens| {
            tokens.extend(quote!(#(#inner_attrs)*));
            for stmt in &body.stmts {
                quote::ToTokens::to_tokens(stmt, tokens);
            }
        });
        tokens
    };

    let name = match &args.name {
        Some(name) => quote!(#name),
        None => {
            let ident = syn::ext::IdentExt::unraw(ident).to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #ident))
        }
    };
    let queue = &args.queue;
    let priority = Literal::i16_unsuffixed(args.priority);
    let max_attempts = Literal::i32_unsuffixed(args.max_attempts);
    let timeout = match args.timeout_millis {
        Some(millis) => {
            let millis = Literal::u64_unsuffixed(millis);
            quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#millis)))
        }
        None => quote!(::core::option::Option::None),
    };

    quote! {
        #(#attrs)*
        // A job that this binary only runs (it is enqueued elsewhere) is still in use: workers
        // find it through the registry.
        #[allow(dead_code)]
        #vis #fn_token #ident(#(#names: #types),*) -> #krate::Job<#tuple> {
            #[allow(clippy::too_many_arguments)]
            async fn #body_fn(#(#body_params,)* #[allow(unused_variables)] #ctx: #rt::JobContext) #output
            #body_tokens

            let #args_var: #tuple = (#(#names,)*);
            {
                #(#assertions)*

                fn #run((#(#values,)*): #tuple, #ctx: #rt::JobContext) -> #rt::JobFuture {
                    #boxed
                }

                fn #run_encoded(
                    #bytes: &[u8],
                    #ctx: #rt::JobContext,
                ) -> ::core::result::Result<#rt::JobFuture, #rt::DecodeError> {
                    ::core::result::Result::Ok(#run(#rt::decode_args::<#tuple>(#bytes)?, #ctx))
                }

                static #descriptor: #rt::JobDescriptor = #rt::JobDescriptor {
                    name: #name,
                    queue: #queue,
                    priority: #priority,
                    max_attempts: #max_attempts,
                    timeout: #timeout,
                    file: ::core::file!(),
                    line: ::core::line!(),
                    run: #run_encoded,
                };

                #rt::inventory::submit! { #rt::Registration(&#descriptor) }

                #rt::job(&#descriptor, #run, #args_var)
            }
        }
    }
}

/// `tokens` with every span replaced by `span`, so that an expression built from them has one
/// location (a path to the runtime, used inside an expression that should point at user code).
fn respanned(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut new = proc_macro2::Group::new(group.delimiter(), respanned(group.stream(), span));
                new.set_span(span);
                token = TokenTree::Group(new);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}
