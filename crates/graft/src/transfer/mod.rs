//! Which layers transfer, and how to transfer them: a linear probe at every stage of a
//! pretrained trunk ([`probe`]), a strategy advisor for the four classic scenarios
//! ([`advise`]), and greedy layer-wise autoencoder pretraining for when no similar pretrained
//! model exists ([`autoencoder`]), and its text counterpart: an encoder that tells real
//! sentences from corrupted ones ([`corrupt`]); siamese and contrastive pretraining of an MLP
//! ([`pairs`]) or of a pretrained trunk's unfrozen top ([`trunk`]).

pub mod advise;
pub mod autoencoder;
pub mod corrupt;
pub mod pairs;
pub mod probe;
pub mod rbm;
pub mod stages;
pub mod study;
pub mod trunk;
