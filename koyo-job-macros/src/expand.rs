//! Turns a checked job definition into its stub function.
//!
//! For `#[define_job(queue = "mail")] pub async fn send_welcome(user_id: i64, email: String) -> R { BODY }`
//! (runtime items written without their `::koyo_job::__private::` prefix):
//!
//! ```text
//! pub fn send_welcome(user_id: i64, email: String) -> ::koyo_job::Job<(i64, String,)> {
//!     enum __KoyoJob {}
//!     impl __KoyoJob {
//!         async fn send_welcome(user_id: i64, email: String, ctx: JobContext) -> R { BODY, retry! rewritten }
//!     }
//!     let args: (i64, String,) = (user_id, email,);
//!     {
//!         // Per argument, at its type: can serde store it and read it back, is it `Send + 'static`?
//!         (&&&ArgumentCheck::<i64>::NEW).check_storable::<i64>();
//!         const _: () = assert_sendable::<i64>();
//!         (&&&ArgumentCheck::<String>::NEW).check_storable::<String>();
//!         const _: () = assert_sendable::<String>();
//!         use {Stored, Unstored, Spawned, Unspawned, Storable, LacksSerialize, …} as _;
//!         fn run((arg0, arg1,): (i64, String,), ctx: JobContext) -> JobFuture {
//!             box_body((&Args::<(i64, String,)>::NEW).spawnable(__KoyoJob::send_welcome(arg0, arg1, ctx)))
//!         }
//!         fn run_encoded(bytes: &[u8], ctx: JobContext) -> Result<JobFuture, DecodeError> {
//!             let args = (&Args::<(i64, String,)>::NEW).decode(bytes)?;
//!             Ok(run(args, ctx))
//!         }
//!         fn render(bytes: &[u8]) -> Result<String, DecodeError> {                         // for the admin page
//!             let (arg0, arg1,) = (&Args::<(i64, String,)>::NEW).decode(bytes)?;
//!             // "user_id: 42, email: \"…\"", each value by `ShowArg`: Debug, or a placeholder
//!         }
//!         static DESCRIPTOR: JobDescriptor = JobDescriptor { name, queue, …, run: run_encoded, render };
//!         inventory::submit! { Registration(&DESCRIPTOR) }
//!         (&Args::<(i64, String,)>::NEW).job(&DESCRIPTOR, run, args)
//!     }
//! }
//! ```
//!
//! An argument type that cannot be one gets one error per cause, at that argument, in the words
//! of a trait of koyo-job's: `ArgumentCheck`'s autoref specialisation picks the single error
//! naming what serde lacks (`Serialize`, `Deserialize` or both), and `assert_sendable` reports a
//! type that is not `Send`. Every use of the whole tuple goes through `Args`, whose autoref
//! specialisation falls back to methods that are never called (`Unstored`, `Unspawned`) when an
//! argument type is wrong, so that nothing else reports it again. With an argument that is not
//! `Send`, that includes the body's future not being `Send` (`box_body` gets a stand-in).
//!
//! Everything lives inside the stub, so a job adds exactly one name to its module.
//! `inventory::submit!` works there: it only defines items (a static and a constructor placed in
//! the platform's init section), and items are hoisted out of the function, so the job is
//! registered whether or not the stub is ever called.
//!
//! The stub has no `#[must_use]` of its own: `Job` is `#[must_use]` already, and with both, an
//! unused call gets two warnings.
//!
//! The nesting is deliberate. `Span::mixed_site()` hides local variables (`ctx`, `args`) from
//! the user's code, but not items, which resolve like the user's own names. So the block the body
//! is defined in holds a single item, `__KoyoJob`; the body being one of its associated functions
//! means that inside the body the job's name still refers to the stub (a job may enqueue itself),
//! while diagnostics such as "future returned by `send_welcome` is not `Send`" use the job's name.
//! The other items sit in an inner block that the body cannot see, and the arguments are moved
//! into a hidden tuple before it, so an argument called `run` still means the argument. The
//! argument types are resolved in that inner block too; it defines no types of its own (its
//! traits are imported as `_`), so they mean what they mean outside.

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType};

use crate::args::{self, JobArgs};
use crate::errors::Errors;
use crate::fallback;
use crate::model::{JobArg, JobFn};
use crate::retry;
use crate::spans::{hidden, located_at};

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
    check_schedule_options(&args, &job, &mut errors);
    let ctx = hidden("ctx");
    retry::rewrite_body(&mut job.body, &ctx, &args.krate, &mut errors);
    match errors.into_error() {
        None => expand(&args, &job, &ctx),
        // Options that were wrong kept their defaults and a wrong `retry!` became a placeholder,
        // so the job can still be expanded: its body is then type-checked as usual, in the same
        // build.
        Some(error) if job.signature_ok => {
            let mut tokens = error.to_compile_error();
            tokens.extend(expand(&args, &job, &ctx));
            tokens
        }
        Some(error) => fallback::stub(&args.krate, &job, &ctx, error),
    }
}

/// A schedule (`cron`, `every`) is for jobs without arguments: the worker builds each slot's
/// job itself. `time_zone` and `missed` only go with a schedule.
fn check_schedule_options(args: &JobArgs, job: &JobFn, errors: &mut Errors) {
    match &args.schedule {
        Some(_) if !job.args.is_empty() => errors.spanned(
            &job.args[0].ident,
            "a job with a schedule (`cron` or `every`) takes no arguments, as workers build each slot's \
             job themselves; for a job with arguments, add a `koyo_job::Periodic` to the worker",
        ),
        Some(_) => {}
        None if args.time_zone.is_some() || args.skip_missed => errors.spanned(
            job.ident(),
            "`time_zone` and `missed` go with a schedule: add `cron = \"…\"` or `every = \"…\"`",
        ),
        None => {}
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
    let asyncness = &job.sig.asyncness;
    let output = job.output();

    let namespace = hidden("__KoyoJob");
    let run = hidden("run");
    let run_encoded = hidden("run_encoded");
    let descriptor = hidden("DESCRIPTOR");
    let args_var = hidden("args");
    let bytes = hidden("bytes");
    let render = hidden("render");
    let out = hidden("out");

    let names: Vec<_> = job.args.iter().map(|arg| &arg.ident).collect();
    let types: Vec<_> = job.args.iter().map(|arg| &*arg.ty).collect();
    let values: Vec<_> = (0..job.args.len()).map(|i| hidden(&format!("arg{i}"))).collect();
    let tuple = quote!((#(#types,)*));
    // `name: value, …` for the admin page, each value by `ShowArg`'s autoref specialisation.
    let show_args = job.args.iter().zip(&values).enumerate().map(|(i, (arg, value))| {
        let label = format!("{}{}: ", if i == 0 { "" } else { ", " }, syn::ext::IdentExt::unraw(&arg.ident));
        quote! {
            #out.push_str(#label);
            (&#rt::ShowArg(&#value)).show_arg(&mut #out);
        }
    });
    let body_params = job
        .args
        .iter()
        .map(|JobArg { attrs, mutability, ident, ty }| quote!(#(#attrs)* #mutability #ident: #ty));

    // Each argument type is checked on its own, so a type that cannot be an argument is reported
    // at that argument, once per cause, each cause in its own words: whether serde can store it
    // and read it back (one error naming what it lacks: `ArgumentCheck`'s autoref
    // specialisation), and whether it is `Send + 'static`.
    let checks = types.iter().map(|ty| {
        let span = ty.span();
        let rt = located_at(rt.clone(), span);
        quote_spanned! {span=>
            (&&&#rt::ArgumentCheck::<#ty>::NEW).check_storable::<#ty>();
            const _: () = #rt::assert_sendable::<#ty>();
        }
    });

    // `box_body` is where the body's future must be `Send` and its output a `JobOutput`: the
    // whole call gets the span of the return type (or of the name), so those errors point at the
    // signature rather than at the attribute. (With an argument that is not `Send`, the future
    // cannot be either; `Args` then hands `box_body` a stand-in, the argument's check having
    // reported it.)
    let signature_span = match output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => ident.span(),
    };
    let boxed = {
        let call = quote!(#rt::box_body((&#rt::Args::<#tuple>::NEW).spawnable(#namespace::#ident(#(#values,)* #ctx))));
        located_at(call, signature_span)
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

    let unique = match &args.unique {
        Some(scope) => {
            let period = match args.unique_for_secs {
                Some(secs) => {
                    let secs = Literal::u64_unsuffixed(secs);
                    quote!(::core::option::Option::Some(#secs))
                }
                None => quote!(::core::option::Option::None),
            };
            quote!(::core::option::Option::Some(#rt::UniqueSpec { scope: #scope, period_secs: #period }))
        }
        None => quote!(::core::option::Option::None),
    };
    let periodic = match &args.schedule {
        Some(schedule) => {
            let zone = args.time_zone.as_deref().unwrap_or("UTC");
            let skip = args.skip_missed;
            quote!(::core::option::Option::Some(#rt::PeriodicSpec {
                schedule: #schedule,
                time_zone: #zone,
                skip_missed: #skip,
            }))
        }
        None => quote!(::core::option::Option::None),
    };
    // A unique job's stub returns a `UniqueJob`, whose answer says whether it was stored.
    let (returned, finish) = match args.unique {
        Some(_) => (quote!(#krate::UniqueJob<#tuple>), quote!(.unique_as_defined())),
        None => (quote!(#krate::Job<#tuple>), quote!()),
    };

    quote! {
        #(#attrs)*
        // A job that this binary only runs (it is enqueued elsewhere) is still in use: workers
        // find it through the registry.
        #[allow(dead_code)]
        #vis #fn_token #ident(#(#names: #types),*) -> #returned {
            // An associated function, so that inside the body the job's name still means the
            // stub (a job may enqueue itself) while diagnostics name the body after the job.
            // This is the only item the body can see; the others are in the block below.
            enum #namespace {}
            impl #namespace {
                // The job's own lints apply to the body; these would be about the expansion: the
                // context parameter, or being `async` (which the attribute requires) or associated.
                #[allow(
                    clippy::too_many_arguments,
                    clippy::unused_async,
                    clippy::new_ret_no_self,
                    clippy::should_implement_trait
                )]
                #asyncness #fn_token #ident(#(#body_params,)* #[allow(unused_variables)] #ctx: #rt::JobContext) #output
                #body_tokens
            }

            let #args_var: #tuple = (#(#names,)*);
            {
                #(#checks)*

                // The whole tuple's uses go through `Args`, whose autoref specialisation keeps
                // them compiling when an argument type is wrong, so that it is reported once, by
                // its argument's check above, and not again (at the attribute) by every use.
                #[allow(unused_imports)]
                use #rt::{
                    LacksBoth as _, LacksDeserialize as _, LacksSerialize as _, Spawned as _, Storable as _,
                    Stored as _, Unspawned as _, Unstored as _,
                };

                fn #run((#(#values,)*): #tuple, #ctx: #rt::JobContext) -> #rt::JobFuture {
                    #boxed
                }

                fn #run_encoded(
                    #bytes: &[u8],
                    #ctx: #rt::JobContext,
                ) -> ::core::result::Result<#rt::JobFuture, #rt::DecodeError> {
                    let #args_var = (&#rt::Args::<#tuple>::NEW).decode(#bytes)?;
                    ::core::result::Result::Ok(#run(#args_var, #ctx))
                }

                fn #render(#bytes: &[u8]) -> ::core::result::Result<::std::string::String, #rt::DecodeError> {
                    #[allow(unused_imports)]
                    use #rt::{ShowDebug as _, ShowOpaque as _};
                    #[allow(unused_variables)]
                    let (#(#values,)*): #tuple = (&#rt::Args::<#tuple>::NEW).decode(#bytes)?;
                    #[allow(unused_mut)]
                    let mut #out = ::std::string::String::new();
                    #(#show_args)*
                    ::core::result::Result::Ok(#out)
                }

                static #descriptor: #rt::JobDescriptor = #rt::JobDescriptor {
                    name: #name,
                    queue: #queue,
                    priority: #priority,
                    max_attempts: #max_attempts,
                    timeout: #timeout,
                    unique: #unique,
                    periodic: #periodic,
                    file: ::core::file!(),
                    line: ::core::line!(),
                    run: #run_encoded,
                    render: #render,
                };

                #rt::inventory::submit! { #rt::Registration(&#descriptor) }

                (&#rt::Args::<#tuple>::NEW).job(&#descriptor, #run, #args_var)#finish
            }
        }
    }
}
