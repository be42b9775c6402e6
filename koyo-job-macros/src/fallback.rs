//! What a definition whose signature is wrong expands to: the errors, plus a stub with the same
//! name and parameters, so that the places calling the job do not pile more errors on top
//! (thiserror's `fallback.rs` does the same). The build fails anyway; the stub is never run.
//!
//! The body is kept too, in a function nothing calls, so that it is still type-checked in the
//! same build and the imports it uses are not reported as unused.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{FnArg, Ident, PatType, Path};

use crate::model::JobFn;
use crate::spans::hidden;

pub(crate) fn stub(krate: &Path, job: &JobFn, ctx: &Ident, error: syn::Error) -> TokenStream {
    let errors = error.to_compile_error();
    let JobFn { attrs, vis, sig, .. } = job;
    let ident = &sig.ident;
    let unsafety = &sig.unsafety;
    let generics = &sig.generics;
    let where_clause = &generics.where_clause;
    // Types as written, patterns dropped: a pattern may be what is wrong.
    let inputs = sig.inputs.iter().map(|input| match input {
        FnArg::Receiver(receiver) => quote!(#receiver),
        FnArg::Typed(PatType { ty, .. }) => quote!(_: #ty),
    });
    // The real stub's return type when the signature itself was fine.
    let arguments = if job.signature_ok {
        let types = job.args.iter().map(|arg| &arg.ty);
        quote!((#(#types,)*))
    } else {
        quote!(())
    };
    let body = body_fn(krate, job, ctx);
    quote! {
        #errors
        #(#attrs)*
        #[allow(dead_code)]
        #vis #unsafety fn #ident #generics (#(#inputs),*) -> #krate::Job<#arguments> #where_clause {
            #body
            ::core::unreachable!()
        }
    }
}

/// The body in an `async fn` of its own, as in the real expansion; not possible with `self`.
fn body_fn(krate: &Path, job: &JobFn, ctx: &Ident) -> TokenStream {
    let sig = &job.sig;
    if sig.receiver().is_some() {
        return TokenStream::new();
    }
    let namespace = hidden("__KoyoJob");
    let (ident, generics, output) = (&sig.ident, &sig.generics, &sig.output);
    let where_clause = &generics.where_clause;
    let params = sig.inputs.iter();
    let (inner_attrs, stmts) = (&job.inner_attrs, &job.body.stmts);
    quote! {
        enum #namespace {}
        impl #namespace {
            #[allow(clippy::too_many_arguments, clippy::unused_async)]
            async fn #ident #generics (
                #(#params,)*
                #[allow(unused_variables)] #ctx: #krate::__private::JobContext
            ) #output #where_clause {
                #(#inner_attrs)*
                #(#stmts)*
            }
        }
    }
}
