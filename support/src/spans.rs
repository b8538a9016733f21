//! The spans and events a closure emits, captured by a `tracing` subscriber of the test's own
//! thread: what the library tells an operator, read back field by field.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One closed span: its name and every field recorded on it (values as `Debug` text, strings
/// without quotes).
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// The span's name.
    pub name: String,
    /// Its fields.
    pub fields: BTreeMap<String, String>,
}

impl SpanRecord {
    /// The field `name`, if recorded.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// One event: its level, the name of the span it happened in, and its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// `INFO`, `DEBUG`, …
    pub level: tracing::Level,
    /// The innermost span's name, if any.
    pub span: Option<String>,
    /// Its fields (`message` included).
    pub fields: BTreeMap<String, String>,
}

/// What a closure emitted, in the order spans closed and events happened.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// The closed spans.
    pub spans: Vec<SpanRecord>,
    /// The events.
    pub events: Vec<EventRecord>,
}

impl Captured {
    /// The spans named `name`, in the order they closed.
    pub fn named(&self, name: &str) -> Vec<&SpanRecord> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    /// Every name and value of every span and event, as one text: what a log collector would
    /// receive, to look for a value that must never be in it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let fields = self.spans.iter().map(|s| (&s.name, &s.fields)).chain(
            self.events
                .iter()
                .map(|e| (&e.fields["message"], &e.fields)),
        );
        for (name, fields) in fields {
            out.push_str(name);
            for (k, v) in fields {
                out.push_str(&format!(" {k}={v}"));
            }
            out.push('\n');
        }
        out
    }
}

/// Runs `f` with a subscriber (at TRACE, for this thread only) that captures every span and
/// event; returns `f`'s value and what it emitted.
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, Captured) {
    let captured = Arc::new(Mutex::new(Captured::default()));
    let layer = Capture(Arc::clone(&captured));
    let subscriber = tracing_subscriber::registry().with(layer);
    // `tracing` caches each call site's interest for all threads, computed when the site is
    // first reached. While a single dispatcher is registered it asks only the reaching
    // thread's own: a site first reached on a thread without a subscriber (another test's)
    // would be cached as uninteresting for this one too. A second dispatcher, kept for the
    // process, makes it ask every live one, this thread's included.
    static OTHER: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    OTHER.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    let value = tracing::subscriber::with_default(subscriber, || {
        // And the sites reached before this thread's subscriber was set are asked again.
        tracing::callsite::rebuild_interest_cache();
        f()
    });
    let captured = captured.lock().unwrap().clone();
    (value, captured)
}

struct Capture(Arc<Mutex<Captured>>);

/// The fields of a span so far, kept in the span's extensions.
struct Fields(BTreeMap<String, String>);

struct Visitor<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Fields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(&mut Visitor(&mut fields.0));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Visitor(&mut fields));
        fields.entry("message".to_owned()).or_default();
        let span = ctx.event_span(event).map(|s| s.name().to_owned());
        let level = *event.metadata().level();
        self.0.lock().unwrap().events.push(EventRecord {
            level,
            span,
            fields,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let fields = span
                .extensions_mut()
                .remove::<Fields>()
                .map(|f| f.0)
                .unwrap_or_default();
            self.0.lock().unwrap().spans.push(SpanRecord {
                name: span.name().to_owned(),
                fields,
            });
        }
    }
}
