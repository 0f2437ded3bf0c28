"""The wire between served clients and the parameter server: the chunked message format
(`format`), building and parsing update / model messages (`messages`), server-side reassembly
and its memory budget (`reassembly`), the fault-injecting link (`link`), TLS and tokens
(`security`) and development certificates (`certs`, `thinwire certs`)."""
