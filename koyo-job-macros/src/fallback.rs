//! What a definition with errors expands to: the errors, plus a stub with the same name and
//! parameters, so that the places calling the job do not pile more errors on top (thiserror's
//! `fallback.rs` does the same). The build fails anyway; the stub is never run.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{FnArg, PatType, Path};

use crate::model::JobFn;

pub(crate) fn stub(krate: &Path, job: &JobFn, error: syn::Error) -> TokenStream {
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
    quote! {
        #errors
        #(#attrs)*
        #[allow(dead_code)]
        #vis #unsafety fn #ident #generics (#(#inputs),*) -> #krate::Job<#arguments> #where_clause {
            ::core::unreachable!()
        }
    }
}
