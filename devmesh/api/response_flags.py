"""Envoy's response flags, in one table: the short code Envoy prints (`%RESPONSE_FLAGS%`),
the field of its access-log message (`envoy.data.accesslog.v3.ResponseFlags`) that carries
it, and what it means in words. Plain data: the daemon, the CLI and the TUI all read it.
"""

from __future__ import annotations

from typing import Final, NamedTuple


class ResponseFlag(NamedTuple):
    code: str  # as Envoy prints it
    field: str  # envoy.data.accesslog.v3.ResponseFlags; "" where it has none
    words: str


RESPONSE_FLAGS: Final = (
    ResponseFlag("UH", "no_healthy_upstream", "no healthy upstream pod"),
    ResponseFlag("UF", "upstream_connection_failure", "could not connect to the upstream"),
    ResponseFlag("UO", "upstream_overflow", "overflow: the connection pool limit was hit"),
    ResponseFlag("NR", "no_route_found", "no route matched"),
    ResponseFlag("URX", "upstream_retry_limit_exceeded", "retry limit reached"),
    ResponseFlag("NC", "no_cluster_found", "no upstream cluster"),
    ResponseFlag("DT", "duration_timeout", "the request's maximum duration passed"),
    ResponseFlag("DC", "downstream_connection_termination", "the caller closed the connection"),
    ResponseFlag("LH", "failed_local_healthcheck", "the local health check failed"),
    ResponseFlag(
        "UT", "upstream_request_timeout", "upstream timeout (the route's timeout; 15s unless set)"
    ),
    ResponseFlag("LR", "local_reset", "reset by this Envoy"),
    ResponseFlag("UR", "upstream_remote_reset", "the upstream reset the stream"),
    ResponseFlag("UC", "upstream_connection_termination", "the upstream closed the connection"),
    ResponseFlag("DI", "delay_injected", "injected delay (fault)"),
    ResponseFlag("FI", "fault_injected", "injected fault (abort)"),
    ResponseFlag("RL", "rate_limited", "rate limited"),
    ResponseFlag("UAEX", "unauthorized_details", "refused by external authorization"),
    ResponseFlag("RLSE", "rate_limit_service_error", "the rate-limit service failed"),
    ResponseFlag("SI", "stream_idle_timeout", "stream idle timeout"),
    ResponseFlag("IH", "invalid_envoy_request_headers", "invalid x-envoy-* request headers"),
    ResponseFlag("DPE", "downstream_protocol_error", "the caller broke the HTTP protocol"),
    ResponseFlag(
        "UMSDR", "upstream_max_stream_duration_reached", "the upstream's max duration passed"
    ),
    ResponseFlag("RFCF", "response_from_cache_filter", "answered from cache"),
    ResponseFlag("NFCF", "no_filter_config_found", "a filter had no configuration"),
    ResponseFlag("UPE", "upstream_protocol_error", "the upstream broke the HTTP protocol"),
    ResponseFlag("OM", "overload_manager", "shed by Envoy's overload manager"),
    ResponseFlag("DF", "dns_resolution_failure", "DNS resolution failed"),
    ResponseFlag("DR", "downstream_remote_reset", "the caller reset the stream"),
    # Newer than the gRPC logger's message in xds-protos: only the HTTP line carries it.
    ResponseFlag("DO", "", "dropped by the cluster's drop_overload"),
)

BY_CODE: Final = {f.code: f for f in RESPONSE_FLAGS}


def flag_words(code: str) -> str:
    """`UO` -> its words; an unknown code is shown as it is."""
    found = BY_CODE.get(code)
    return found.words if found else code


def explain_flags(codes: tuple[str, ...] | list[str]) -> str:
    """`("URX", "UF")` -> "retry limit reached; could not connect to the upstream"."""
    return "; ".join(flag_words(c) for c in codes)
