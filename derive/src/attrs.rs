//! Reading the struct: its `#[upsert(…)]` and `#[diesel(…)]` attributes, its fields and the
//! columns they map to. Every mistake becomes a `syn::Error` spanned at the user's tokens, and
//! the model is repaired around it (the bad piece left out), so that the impls can still be
//! written and the code that uses the struct adds no error of its own.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, Ident, LitStr, Path, Token, Type};

/// A struct declared with `#[derive(UpsertModel)]`, checked.
pub(crate) struct Model {
    /// Where the library is: `::upsert_kit` unless `#[upsert(crate = …)]` says otherwise.
    pub krate: Path,
    /// The Diesel table module.
    pub table: Path,
    /// The fields that are columns, in declaration order (`skip_insertion` fields left out).
    pub fields: Vec<Field>,
    /// Indices into `fields` of the conflict key, in the order the attribute lists them.
    pub key: Vec<usize>,
    /// Indices into `fields` of the columns kept on update.
    pub keep: Vec<usize>,
}

/// One field that is written to a column.
pub(crate) struct Field {
    /// The field's name.
    pub ident: Ident,
    /// The column's name: the field's unless `#[diesel(column_name = …)]` renames it; spanned
    /// where the user wrote it, so an unknown column is reported there.
    pub column: Ident,
    pub ty: Type,
    /// `#[upsert(unchecked)]`: no value check before writing.
    pub unchecked: bool,
    /// `#[upsert(keep)]`, with the attribute's span.
    pub keep: Option<Span>,
}

/// Collects errors so that one run reports every mistake, not only the first.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
}

/// A list of names as written in `key(a, b)`.
struct NameList {
    /// The `key` / `keep` word, for errors about the whole list.
    span: Span,
    names: Vec<Ident>,
}

/// Skips the value of an option this derive does not read (`sql_type = …`, `belongs_to(…)`).
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    let input: ParseStream<'_> = meta.input;
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

fn name_list(meta: &ParseNestedMeta<'_>) -> syn::Result<NameList> {
    let span = meta.path.span();
    let content;
    syn::parenthesized!(content in meta.input);
    let mut names = Vec::new();
    while !content.is_empty() {
        let path: Path = content.parse()?;
        match path.get_ident() {
            Some(ident) => names.push(ident.clone()),
            None => {
                return Err(syn::Error::new_spanned(
                    &path,
                    "expected a field name: `key(a, b)` and `keep(c)` list fields of this struct",
                ))
            }
        }
        if content.is_empty() {
            break;
        }
        content.parse::<Token![,]>()?;
    }
    Ok(NameList { span, names })
}

/// `column_name = ident` or `column_name = "name"`.
fn column_name(meta: &ParseNestedMeta<'_>) -> syn::Result<Ident> {
    let value = meta.value()?;
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        return syn::parse_str::<Ident>(&lit.value())
            .or_else(|_| syn::parse_str::<Ident>(&format!("r#{}", lit.value())))
            .map(|mut ident| {
                ident.set_span(lit.span());
                ident
            })
            .map_err(|_| syn::Error::new(lit.span(), "not a column name Diesel can declare"));
    }
    value.call(Ident::parse_any)
}

/// Diesel's default table name: the struct's name in snake case, plus `s`.
fn inferred_table(ident: &Ident) -> Path {
    let mut snake = String::new();
    for (i, c) in ident.unraw().to_string().chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake.push('s');
    Ident::new(&snake, ident.span()).into()
}

fn is(attr: &Attribute, name: &str) -> bool {
    attr.path().is_ident(name)
}

impl Model {
    /// The model the struct declares, and the mistakes found in it. With mistakes, the model
    /// is what is left without the bad pieces (an unknown or repeated key or keep column, a
    /// field whose attribute is wrong): its impls compile, and only the errors are reported.
    pub(crate) fn from_input(input: &DeriveInput) -> (Model, Option<syn::Error>) {
        let mut errors = Errors::default();
        let mut krate: Option<Path> = None;
        let mut upsert_table: Option<Path> = None;
        let mut diesel_table: Option<Path> = None;
        let mut key: Option<NameList> = None;
        let mut keep: Option<NameList> = None;
        // An `upsert` attribute that did not parse may have held the key.
        let mut upsert_attr_broken = false;

        for attr in &input.attrs {
            if is(attr, "upsert") {
                let parsed = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("table") {
                        upsert_table = Some(meta.value()?.parse()?);
                    } else if meta.path.is_ident("key") {
                        if key.is_some() {
                            return Err(meta.error("the key is given twice: list every column in one `key(…)`"));
                        }
                        key = Some(name_list(&meta)?);
                    } else if meta.path.is_ident("keep") {
                        if keep.is_some() {
                            return Err(meta.error("`keep` is given twice: list every column in one `keep(…)`"));
                        }
                        keep = Some(name_list(&meta)?);
                    } else if meta.path.is_ident("crate") {
                        krate = Some(meta.value()?.call(Path::parse_mod_style)?);
                    } else {
                        return Err(meta.error(
                            "unknown `upsert` option: expected `key(…)`, `keep(…)`, `table = …` or `crate = …`",
                        ));
                    }
                    Ok(())
                });
                if let Err(e) = parsed {
                    errors.push(e);
                    upsert_attr_broken = true;
                }
            } else if is(attr, "diesel") {
                // Diesel's own derives report malformed `diesel` attributes.
                let _reported_by_diesel = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("table_name") {
                        diesel_table = Some(meta.value()?.parse()?);
                        Ok(())
                    } else {
                        skip_value(&meta)
                    }
                });
            }
        }

        let table = match (diesel_table, upsert_table) {
            (Some(diesel), Some(upsert)) => {
                errors.push(syn::Error::new_spanned(
                    upsert,
                    "the table is already given by `#[diesel(table_name = …)]`: say it once",
                ));
                diesel
            }
            (Some(table), None) | (None, Some(table)) => table,
            (None, None) => inferred_table(&input.ident),
        };

        let named = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => Some(named),
                _ => None,
            },
            _ => None,
        };
        if named.is_none() {
            errors.push(syn::Error::new_spanned(
                &input.ident,
                "`#[derive(UpsertModel)]` needs a struct with named fields, one per column",
            ));
            upsert_attr_broken = true;
        }

        let mut fields = Vec::new();
        // Fields whose attributes were wrong: reported, then left out of the impls.
        let mut broken = Vec::new();
        for f in named.into_iter().flat_map(|named| &named.named) {
            let ident = f.ident.clone().expect("named field");
            let mut column = ident.clone();
            let mut unchecked = false;
            let mut keep_attr = None;
            let mut skip = false;
            let mut field_broken = false;
            for attr in &f.attrs {
                if is(attr, "upsert") {
                    let parsed = attr.parse_nested_meta(|meta| {
                        if meta.path.is_ident("unchecked") {
                            unchecked = true;
                        } else if meta.path.is_ident("keep") {
                            keep_attr = Some(meta.path.span());
                        } else {
                            return Err(meta.error(
                                "unknown `upsert` field option: expected `keep` or `unchecked`",
                            ));
                        }
                        Ok(())
                    });
                    if let Err(e) = parsed {
                        errors.push(e);
                    }
                } else if is(attr, "diesel") {
                    let parsed = attr.parse_nested_meta(|meta| {
                        if meta.path.is_ident("column_name") {
                            column = column_name(&meta)?;
                        } else if meta.path.is_ident("skip_insertion") {
                            skip = true;
                        } else if meta.path.is_ident("serialize_as") || meta.path.is_ident("embed") {
                            return Err(meta.error(format!(
                                "`#[derive(UpsertModel)]` binds each field as it is and does not support `{}`; \
                                 convert the value into a field of the column's type instead",
                                meta.path.to_token_stream()
                            )));
                        } else {
                            skip_value(&meta)?;
                        }
                        Ok(())
                    });
                    if let Err(e) = parsed {
                        errors.push(e);
                        field_broken = true;
                    }
                }
            }
            if skip {
                continue;
            }
            broken.push(field_broken);
            fields.push(Field {
                ident,
                column,
                ty: f.ty.clone(),
                unchecked,
                keep: keep_attr,
            });
        }

        let find = |name: &Ident| -> Option<usize> {
            let name = name.unraw();
            fields
                .iter()
                .position(|f| f.ident.unraw() == name)
                .or_else(|| fields.iter().position(|f| f.column.unraw() == name))
        };
        let field_names = fields
            .iter()
            .map(|f| format!("`{}`", f.ident.unraw()))
            .collect::<Vec<_>>()
            .join(", ");
        let struct_name = input.ident.unraw();

        let mut key_idx = Vec::new();
        match &key {
            None if upsert_attr_broken => {}
            None => errors.push(syn::Error::new_spanned(
                &input.ident,
                format!(
                    "`{struct_name}` has no conflict key: add `#[upsert(key(…))]` with the fields of its \
                     unique index or primary key"
                ),
            )),
            Some(list) if list.names.is_empty() => errors.push(syn::Error::new(
                list.span,
                "the key is empty: name the fields of a unique index or of the primary key, `key(a, b)`",
            )),
            Some(list) => {
                for name in &list.names {
                    match find(name) {
                        None => errors.push(syn::Error::new(
                            name.span(),
                            format!(
                                "the key column `{}` is not a field of `{struct_name}` (its fields: {field_names})",
                                name.unraw()
                            ),
                        )),
                        Some(i) if key_idx.contains(&i) => errors.push(syn::Error::new(
                            name.span(),
                            format!("`{}` is listed twice in the key", name.unraw()),
                        )),
                        Some(i) => key_idx.push(i),
                    }
                }
            }
        }

        let mut keep_idx = Vec::new();
        if let Some(list) = &keep {
            for name in &list.names {
                match find(name) {
                    None => errors.push(syn::Error::new(
                        name.span(),
                        format!(
                            "the keep column `{}` is not a field of `{struct_name}` (its fields: {field_names})",
                            name.unraw()
                        ),
                    )),
                    Some(i) if key_idx.contains(&i) => errors.push(syn::Error::new(
                        name.span(),
                        format!(
                            "`{}` is part of the key: a key column is never updated, so it cannot be kept",
                            name.unraw()
                        ),
                    )),
                    Some(i) if keep_idx.contains(&i) => errors.push(syn::Error::new(
                        name.span(),
                        format!("`{}` is listed twice in `keep`", name.unraw()),
                    )),
                    Some(i) => keep_idx.push(i),
                }
            }
        }
        for (i, f) in fields.iter().enumerate() {
            if let Some(span) = f.keep {
                if key_idx.contains(&i) {
                    errors.push(syn::Error::new(
                        span,
                        format!(
                            "`{}` is part of the key: a key column is never updated, so it cannot be kept",
                            f.ident.unraw()
                        ),
                    ));
                } else if !keep_idx.contains(&i) {
                    keep_idx.push(i);
                }
            }
        }

        // Leave the broken fields out, and renumber the key and keep columns.
        let mut renumbered = Vec::new();
        let mut next = 0;
        for &b in &broken {
            renumbered.push((!b).then_some(next));
            next += usize::from(!b);
        }
        let fields = fields
            .into_iter()
            .zip(&broken)
            .filter(|(_, &b)| !b)
            .map(|(f, _)| f)
            .collect();
        let model = Model {
            krate: krate.unwrap_or_else(|| syn::parse_quote!(::upsert_kit)),
            table,
            fields,
            key: key_idx.iter().filter_map(|&i| renumbered[i]).collect(),
            keep: keep_idx.iter().filter_map(|&i| renumbered[i]).collect(),
        };
        (model, errors.0)
    }
}

/// Whether `tokens` mention one of `names` (a type that depends on the struct's type
/// parameters cannot be checked where the struct is declared).
pub(crate) fn mentions(tokens: TokenStream, names: &[Ident]) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(ident) => names.contains(&ident),
        TokenTree::Group(group) => mentions(group.stream(), names),
        _ => false,
    })
}
