//! Every request type in both encodings: JSON parsed, rkyv validated in place (bytecheck) and
//! deserialized. Arbitrary bytes must give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reaper_core::encoding::access_archived;
use reaper_core::schema::*;
use reaper_core::{Encoding, WireMessage};

fn both<T>(data: &[u8])
where
    T: WireMessage + rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Portable,
{
    let _ = T::decode(Encoding::Json, data);
    let _ = access_archived::<T>(data);
    let _ = T::decode(Encoding::Rkyv, data);
}

fuzz_target!(|data: &[u8]| {
    both::<CompletionRequest>(data);
    both::<CompletionFeedback>(data);
    both::<HealthRequest>(data);
    both::<ProviderListRequest>(data);
    both::<ChatRequest>(data);
    both::<AgentTask>(data);
    both::<AgentControl>(data);
});
