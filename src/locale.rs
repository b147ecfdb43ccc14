//! The new database's encoding, locale provider and locales: defaults from
//! the template, then core's checks, in core's order and words. This is the
//! part of `createdb()` that changed most between versions (ICU rules and
//! language tags in 16, the builtin provider and `datlocale` in 17, new
//! hints in 18), so each difference is a `cfg` branch here.
//!
//! The bytes of a branch are the template's, so core's rule that encoding
//! and locales must match the template's (except for template0, assumed to
//! hold only ASCII and no collation-dependent indexes) is exactly the rule
//! a branch needs.
//!
//! Everything here runs inside the CREATE DATABASE transaction, as every
//! backend function does (lib.rs); nothing else is asked of the caller, so
//! the functions are safe.

use crate::catalog::DatabaseRow;
use crate::compat;
use crate::error::{error, Report};
use crate::ffi;
use crate::options::CreatedbOptions;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

/// Encoding and locale of the new database, as its `pg_database` row holds them.
pub struct Locale {
    pub encoding: i32,
    pub collate: CString,
    pub ctype: CString,
    pub provider: i8,
    /// The provider's locale: the ICU locale (15, 16: `daticulocale`), or
    /// the ICU or builtin locale (17+: `datlocale`); None for libc.
    pub locale: Option<CString>,
    /// ICU tailoring rules (16+).
    pub icu_rules: Option<CString>,
}

const ICU: i8 = pg_sys::COLLPROVIDER_ICU as i8;
const LIBC: i8 = pg_sys::COLLPROVIDER_LIBC as i8;
#[cfg(not(any(feature = "pg15", feature = "pg16")))]
const BUILTIN: i8 = pg_sys::COLLPROVIDER_BUILTIN as i8;

fn s(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

fn enc_name(e: i32) -> String {
    s(compat::encoding_name(e))
}

/// Resolve and check the locale settings of a new database made from
/// template `t` (named `template_name`).
pub fn resolve(o: &CreatedbOptions, t: &DatabaseRow, template_name: &CStr) -> Locale {
    // If encoding or locales are defaulted, use the template's.
    let encoding = if o.encoding < 0 {
        t.encoding
    } else {
        o.encoding
    };
    let provider = if o.locale_provider == 0 {
        t.locale_provider
    } else {
        o.locale_provider
    };
    let (mut locale, from_template) = provider_locale(o, t, provider);
    #[cfg(feature = "pg15")]
    let icu_rules: Option<CString> = None;
    #[cfg(feature = "pg16")]
    let icu_rules = o
        .icu_rules
        .clone()
        .or_else(|| (provider == ICU).then(|| t.icu_rules.clone()).flatten());
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    let icu_rules = o.icu_rules.clone().or_else(|| t.icu_rules.clone());

    // Some encodings are client only.
    if !compat::is_server_encoding(encoding) {
        error(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("invalid server encoding {encoding}"),
        );
    }

    // Check that the chosen locales are valid, and get canonical spellings.
    let collate = canonical(
        libc::LC_COLLATE,
        o.collate.as_ref().unwrap_or(&t.collate),
        provider,
    );
    let ctype = canonical(
        libc::LC_CTYPE,
        o.ctype.as_ref().unwrap_or(&t.ctype),
        provider,
    );
    // SAFETY: NUL-terminated strings that outlive the call, which only
    // reads them (and raises core's ERROR on a mismatch).
    unsafe { pg_sys::check_encoding_locale_matches(encoding, collate.as_ptr(), ctype.as_ptr()) };

    validate_provider(
        o,
        encoding,
        provider,
        &mut locale,
        from_template,
        &icu_rules,
    );

    if template_name.to_bytes() != b"template0" {
        must_match_template(t, encoding, &collate, &ctype, provider, &locale, &icu_rules);
    }
    Locale {
        encoding,
        collate,
        ctype,
        provider,
        locale,
        icu_rules,
    }
}

/// The provider's locale before validation, and whether it is the
/// template's own (then ICU locales are kept as spelled, not canonicalised).
#[cfg(feature = "pg15")]
fn provider_locale(o: &CreatedbOptions, t: &DatabaseRow, provider: i8) -> (Option<CString>, bool) {
    match &o.icu_locale {
        Some(l) => (Some(l.clone()), false),
        None => ((provider == ICU).then(|| t.locale.clone()).flatten(), true),
    }
}

#[cfg(feature = "pg16")]
fn provider_locale(o: &CreatedbOptions, t: &DatabaseRow, provider: i8) -> (Option<CString>, bool) {
    match (&o.icu_locale, provider == ICU) {
        (Some(l), _) => (Some(l.clone()), false),
        (None, true) => match &o.locale {
            Some(l) => (Some(l.clone()), false),
            None => (t.locale.clone(), true),
        },
        (None, false) => (None, false),
    }
}

#[cfg(not(any(feature = "pg15", feature = "pg16")))]
fn provider_locale(o: &CreatedbOptions, t: &DatabaseRow, provider: i8) -> (Option<CString>, bool) {
    // LOCALE, then BUILTIN_LOCALE, then ICU_LOCALE: the last one given wins.
    let given = o
        .icu_locale
        .clone()
        .or_else(|| o.builtin_locale.clone())
        .or_else(|| o.locale.clone());
    if given.is_some() {
        return (given, false);
    }
    // 18 takes the template's locale only for the template's own provider.
    #[cfg(feature = "pg18")]
    if provider != t.locale_provider {
        return (None, false);
    }
    let _ = provider;
    (t.locale.clone(), true)
}

/// `check_locale()` with core's message for this version.
fn canonical(category: i32, name: &CStr, provider: i8) -> CString {
    ffi::check_locale(category, name).unwrap_or_else(|| {
        let _ = provider;
        #[cfg(feature = "pg15")]
        error(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("invalid locale name: \"{}\"", s(name)),
        );
        #[cfg(not(feature = "pg15"))]
        {
            let what = if category == libc::LC_COLLATE {
                "LC_COLLATE"
            } else {
                "LC_CTYPE"
            };
            let r = Report::new(
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                format!("invalid {what} locale name: \"{}\"", s(name)),
            );
            #[cfg(any(feature = "pg16", feature = "pg17"))]
            r.hint("If the locale name is specific to ICU, use ICU_LOCALE.").error();
            #[cfg(feature = "pg18")]
            match provider {
                BUILTIN => r
                    .hint("If the locale name is specific to the builtin provider, use BUILTIN_LOCALE.")
                    .error(),
                ICU => r
                    .hint("If the locale name is specific to the ICU provider, use ICU_LOCALE.")
                    .error(),
                _ => r.error(),
            }
        }
    })
}

/// The provider-specific checks (and ICU's canonical spelling).
#[cfg(feature = "pg15")]
fn validate_provider(
    _o: &CreatedbOptions,
    encoding: i32,
    provider: i8,
    locale: &mut Option<CString>,
    _from_template: bool,
    _icu_rules: &Option<CString>,
) {
    if provider == ICU {
        icu_encoding(encoding);
        // Happens if template0 uses libc but the new database asks for ICU.
        let Some(icu) = locale else {
            error(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "ICU locale must be specified",
            )
        };
        ffi::check_icu_locale(icu);
    } else if locale.is_some() {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
            "ICU locale cannot be specified unless locale provider is ICU",
        );
    }
}

#[cfg(feature = "pg16")]
fn validate_provider(
    _o: &CreatedbOptions,
    encoding: i32,
    provider: i8,
    locale: &mut Option<CString>,
    from_template: bool,
    icu_rules: &Option<CString>,
) {
    if provider == ICU {
        icu_encoding(encoding);
        let Some(icu) = locale.clone() else {
            error(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "LOCALE or ICU_LOCALE must be specified",
            )
        };
        *locale = Some(icu_canonical(icu, from_template));
    } else {
        if locale.is_some() {
            error(
                PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
                "ICU locale cannot be specified unless locale provider is ICU",
            );
        }
        if icu_rules.is_some() {
            error(
                PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
                "ICU rules cannot be specified unless locale provider is ICU",
            );
        }
    }
}

#[cfg(not(any(feature = "pg15", feature = "pg16")))]
fn validate_provider(
    o: &CreatedbOptions,
    encoding: i32,
    provider: i8,
    locale: &mut Option<CString>,
    from_template: bool,
    icu_rules: &Option<CString>,
) {
    if provider != BUILTIN && o.builtin_locale_given {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
            "BUILTIN_LOCALE cannot be specified unless locale provider is builtin",
        );
    }
    if provider != ICU {
        if o.icu_locale_given {
            error(
                PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
                "ICU locale cannot be specified unless locale provider is ICU",
            );
        }
        if icu_rules.is_some() {
            error(
                PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
                "ICU rules cannot be specified unless locale provider is ICU",
            );
        }
    }
    match provider {
        BUILTIN => {
            // Happens if template0 uses libc but the new database asks for builtin.
            let Some(l) = locale.clone() else {
                error(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    "LOCALE or BUILTIN_LOCALE must be specified",
                )
            };
            *locale = Some(ffi::builtin_validate_locale(encoding, &l));
        }
        ICU => {
            icu_encoding(encoding);
            let Some(l) = locale.clone() else {
                error(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    "LOCALE or ICU_LOCALE must be specified",
                )
            };
            *locale = Some(icu_canonical(l, from_template));
        }
        // For libc, the locale is datcollate and datctype.
        _ => *locale = None,
    }
}

fn icu_encoding(encoding: i32) {
    // SAFETY: a lookup of a plain int in the encoding table.
    if !unsafe { pg_sys::is_encoding_supported_by_icu(encoding) } {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "encoding \"{}\" is not supported with ICU provider",
                enc_name(encoding)
            ),
        );
    }
}

/// During binary upgrade, or when the locale came from the template, keep
/// the ICU locale as spelled; otherwise canonicalise it to a language tag,
/// with core's NOTICE. Then validate it.
#[cfg(not(feature = "pg15"))]
fn icu_canonical(locale: CString, from_template: bool) -> CString {
    let mut locale = locale;
    // SAFETY: a read of a bool this backend set at startup.
    if !unsafe { pg_sys::IsBinaryUpgrade } && !from_template {
        if let Some(tag) = ffi::icu_language_tag(&locale) {
            if tag != locale {
                Report::new(
                    PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                    format!(
                        "using standard form \"{}\" for ICU locale \"{}\"",
                        s(&tag),
                        s(&locale)
                    ),
                )
                .notice();
                locale = tag;
            }
        }
    }
    ffi::icu_validate_locale(&locale);
    locale
}

/// Core's rule: a copy must keep the template's encoding and locales,
/// unless the template is template0.
fn must_match_template(
    t: &DatabaseRow,
    encoding: i32,
    collate: &CStr,
    ctype: &CStr,
    provider: i8,
    locale: &Option<CString>,
    icu_rules: &Option<CString>,
) {
    let mismatch = |what: String, hint: &str| -> ! {
        Report::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, what)
            .hint(format!(
                "Use the same {hint} as in the template database, or use template0 as template."
            ))
            .error()
    };
    if encoding != t.encoding {
        mismatch(
            format!(
                "new encoding ({}) is incompatible with the encoding of the template database ({})",
                enc_name(encoding),
                enc_name(t.encoding)
            ),
            "encoding",
        );
    }
    if collate != t.collate.as_c_str() {
        mismatch(
            format!(
                "new collation ({}) is incompatible with the collation of the template database ({})",
                s(collate),
                s(&t.collate)
            ),
            "collation",
        );
    }
    if ctype != t.ctype.as_c_str() {
        mismatch(
            format!(
                "new LC_CTYPE ({}) is incompatible with the LC_CTYPE of the template database ({})",
                s(ctype),
                s(&t.ctype)
            ),
            "LC_CTYPE",
        );
    }
    if provider != t.locale_provider {
        // SAFETY: collprovider_name() returns a static string for any
        // provider (or raises ERROR for an unknown one).
        let name = |p: i8| s(unsafe { CStr::from_ptr(pg_sys::collprovider_name(p as _)) });
        mismatch(
            format!(
                "new locale provider ({}) does not match locale provider of the template database ({})",
                name(provider),
                name(t.locale_provider)
            ),
            "locale provider",
        );
    }
    if provider == ICU {
        if locale != &t.locale {
            mismatch(
                format!(
                    "new ICU locale ({}) is incompatible with the ICU locale of the template database ({})",
                    locale.as_deref().map(s).unwrap_or_default(),
                    t.locale.as_deref().map(s).unwrap_or_default()
                ),
                "ICU locale",
            );
        }
        let rules = |r: &Option<CString>| r.as_deref().map(s).unwrap_or_default();
        if cfg!(not(feature = "pg15")) && rules(icu_rules) != rules(&t.icu_rules) {
            mismatch(
                format!(
                    "new ICU collation rules ({}) are incompatible with the ICU collation rules of the template database ({})",
                    rules(icu_rules),
                    rules(&t.icu_rules)
                ),
                "ICU collation rules",
            );
        }
    }
}

/// Core's collation-version rule: the template's recorded version must
/// match what the OS provides now, unless the statement names a version
/// (as pg_upgrade does); the new database records the template's version.
pub fn collation_version(
    o: &CreatedbOptions,
    t: &DatabaseRow,
    template_name: &CStr,
    l: &Locale,
) -> Option<CString> {
    let provider_locale = || {
        if l.provider == LIBC {
            l.collate.clone()
        } else {
            l.locale.clone().expect("the provider's locale was checked")
        }
    };
    let name = template_name.to_string_lossy();
    if let (Some(recorded), None) = (&t.collation_version, &o.collation_version) {
        let Some(actual) = ffi::collation_actual_version(l.provider as _, &provider_locale())
        else {
            error(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("template database \"{name}\" has a collation version, but no actual collation version could be determined"),
            )
        };
        if &actual != recorded {
            // SAFETY: a NUL-terminated argument; the result is it or a
            // palloc'd NUL-terminated copy, converted at once.
            let quoted =
                unsafe { CStr::from_ptr(pg_sys::quote_identifier(template_name.as_ptr())) }
                    .to_string_lossy();
            Report::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("template database \"{name}\" has a collation version mismatch"),
            )
            .detail(format!(
                "The template database was created using collation version {}, but the operating system provides version {}.",
                recorded.to_string_lossy(),
                actual.to_string_lossy()
            ))
            .hint(format!(
                "Rebuild all objects in the template database that use the default collation and run ALTER DATABASE {quoted} REFRESH COLLATION VERSION, or build PostgreSQL with the right library version."
            ))
            .error();
        }
    }
    o.collation_version
        .clone()
        .or_else(|| t.collation_version.clone())
        .or_else(|| ffi::collation_actual_version(l.provider as _, &provider_locale()))
}
