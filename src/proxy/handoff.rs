//! A tunnel's entry across a binary upgrade: what the old process writes of it
//! ([`TunnelEnd::carry`]) and what the new one makes of that ([`TunnelEnd::resume`]). The
//! route and upstream server travel by name, not by index, since the new process may run
//! another config; a route it no longer has leaves the tunnel relaying, logged without one.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Closing, Trace, TunnelEnd, WorkerContext};
use crate::proxy::Slot;
use crate::tunnel::fields::{Malformed, Reader, Writer};
use crate::upstream::UpstreamAddr;

impl TunnelEnd {
    /// The entry as bytes for the process taking over, where the tunnel goes on. Its place
    /// under this process's limits and its upstream count go when `self` drops: after the
    /// bytes are on their way, so that no connection counts as gone before it is.
    pub fn carry(&self, ctx: &WorkerContext) -> Vec<u8> {
        ctx.metrics().tunnels.sub(1);
        let trace = &self.end.trace;
        let mut out = Vec::with_capacity(128);
        let mut w = Writer(&mut out);
        w.str(&trace.client.to_string());
        match trace.route {
            Some(r) => {
                let route = ctx.shared.config.routes.get(r as usize);
                let host = route.host.as_ref().map(ToString::to_string);
                w.u8(1).str(host.as_deref().unwrap_or("")).str(&route.path);
            }
            None => {
                w.u8(0);
            }
        }
        match &trace.upstream {
            Some(addr) => w.u8(1).str(&addr.to_string()),
            None => w.u8(0),
        };
        w.u64(millis_since(self.end.started))
            .u64(millis_since(self.opened));
        out
    }

    /// The entry of a tunnel another process carried over, taking a place under this
    /// process's limits (never refused: the tunnel is open already).
    pub fn resume(ctx: &Rc<WorkerContext>, bytes: &[u8]) -> Result<TunnelEnd, Malformed> {
        let mut r = Reader(bytes);
        let client: SocketAddr = r.str()?.parse().map_err(|_| Malformed("client address"))?;
        let route = match r.u8()? {
            0 => None,
            _ => {
                let (host, path) = (r.str()?, r.str()?);
                ctx.shared.config.routes.iter().position(|route| {
                    route.path == path
                        && route.host.as_ref().map(ToString::to_string).as_deref()
                            == (!host.is_empty()).then_some(host)
                })
            }
        };
        let upstream = match r.u8()? {
            0 => None,
            _ => Some(parse_upstream(r.str()?)?),
        };
        let started = instant_ago(r.u64()?);
        let opened = instant_ago(r.u64()?);
        r.end()?;
        // Counted against its server again, where the new table still lists it.
        let open = route.zip(upstream.as_ref()).and_then(|(route, addr)| {
            let table = ctx.shared.table.load();
            let group = table.group_for_route(route);
            let index = group.servers().iter().position(|s| s == addr)?;
            Some(group.balancer.open(index))
        });
        ctx.metrics().tunnels.add(1);
        Ok(TunnelEnd {
            end: Closing {
                trace: Trace {
                    client,
                    route: route.map(|r| r as u32),
                    upstream,
                    upgrade: true,
                    wss: false,
                    open,
                },
                started,
                _slot: Some(Slot::resumed(ctx, client.ip())),
            },
            opened,
        })
    }
}

fn parse_upstream(text: &str) -> Result<UpstreamAddr, Malformed> {
    match text.strip_prefix("unix:") {
        Some(path) => Ok(UpstreamAddr::Unix(Arc::from(std::path::Path::new(path)))),
        None => text
            .parse()
            .map(UpstreamAddr::Tcp)
            .map_err(|_| Malformed("upstream address")),
    }
}

fn millis_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

fn instant_ago(ms: u64) -> Instant {
    let now = Instant::now();
    now.checked_sub(Duration::from_millis(ms)).unwrap_or(now)
}
