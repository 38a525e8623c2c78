"""Images and video for Gemma 4: decoding, the processor (resize, patches, frames, timestamps) and the
remote-fetch policy; produces typed MediaInput values and knows no HTTP framework."""
