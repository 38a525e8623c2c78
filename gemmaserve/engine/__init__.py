"""The inference engine: async client, step loop, scheduler, paged KV cache, sampler, detokenizer."""
