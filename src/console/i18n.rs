//! The console's languages: English and German. The language is the
//! `sipscreen_lang` cookie (the switch in the header sets it), else the
//! best of `Accept-Language`, else English. Every text is one row of the
//! message table below, so a missing translation does not compile.
//! Messages from the store and the API (refusal reasons, errors) stay in
//! English.

use axum::http::HeaderMap;
use axum::http::header;

use super::session::cookie;

/// The language cookie.
pub const LANG_COOKIE: &str = "sipscreen_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    De,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::De];

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::De => "de",
        }
    }

    /// The language's own name (for the switch).
    pub fn name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::De => "Deutsch",
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        match code {
            "en" => Some(Lang::En),
            "de" => Some(Lang::De),
            _ => None,
        }
    }

    /// The request's language: cookie, else `Accept-Language`, else English.
    pub fn of(headers: &HeaderMap) -> Lang {
        let from_cookie = headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|c| cookie(c, LANG_COOKIE))
            .and_then(Lang::parse);
        from_cookie
            .or_else(|| {
                headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(accept_language)
            })
            .unwrap_or(Lang::En)
    }
}

/// The preferred supported language of an `Accept-Language` value
/// (`de-CH, en;q=0.8`): highest q first, the earlier on a tie.
pub fn accept_language(v: &str) -> Option<Lang> {
    let mut best: Option<(Lang, f32)> = None;
    for item in v.split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q=").map(str::to_string))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let primary = tag.split('-').next().unwrap_or("");
        if let Some(l) = Lang::parse(primary)
            && q > 0.0
            && best.is_none_or(|(_, bq)| q > bq)
        {
            best = Some((l, q));
        }
    }
    best.map(|(l, _)| l)
}

macro_rules! messages {
    ($($name:ident => $en:literal, $de:literal;)*) => {
        /// A console text.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum M { $($name),* }

        impl M {
            pub const ALL: &'static [M] = &[$(M::$name),*];

            pub fn text(self, l: Lang) -> &'static str {
                match (self, l) {
                    $((M::$name, Lang::En) => $en, (M::$name, Lang::De) => $de,)*
                }
            }
        }
    };
}

messages! {
    AppName => "sipscreen console", "sipscreen-Konsole";
    Skip => "Skip to content", "Zum Inhalt springen";
    MainNav => "Main", "Hauptmenü";
    NavExceptions => "Exception list", "Ausnahmeliste";
    NavCalls => "Calls", "Anrufe";
    NavLines => "Lines", "Leitungen";
    NavAudit => "Audit", "Änderungsprotokoll";
    SignedInAs => "Signed in as", "Angemeldet als";
    RoleView => "view only", "nur ansehen";
    RoleEdit => "may edit", "darf bearbeiten";
    SignOut => "Sign out", "Abmelden";
    Language => "Language", "Sprache";
    SignInTitle => "Sign in", "Anmelden";
    TokenLabel => "Access token", "Zugangstoken";
    TokenHelp => "The view or edit token your administrator gave you. It is exchanged for a session and not kept in the browser.",
        "Das Ansichts- oder Bearbeitungstoken von Ihrem Administrator. Es wird gegen eine Sitzung getauscht und nicht im Browser gespeichert.";
    SignInButton => "Sign in", "Anmelden";
    BadToken => "This token is not valid.", "Dieses Token ist ungültig.";
    SignedOut => "You are signed out.", "Sie sind abgemeldet.";
    Forbidden => "Your session may only view; changing the list needs an edit token.",
        "Ihre Sitzung darf nur ansehen; Änderungen an der Liste brauchen ein Bearbeitungstoken.";
    CsrfBad => "This form was not sent by this console session (or has expired). Reload the page and try again.",
        "Dieses Formular stammt nicht aus dieser Konsolensitzung (oder ist abgelaufen). Laden Sie die Seite neu und versuchen Sie es erneut.";
    SignInFirst => "Please sign in first.", "Bitte melden Sie sich zuerst an.";
    NotFoundPage => "There is no such page.", "Diese Seite gibt es nicht.";
    ViewOnlyNote => "Your token may only view. Ask a manager to change the list.",
        "Ihr Token darf nur ansehen. Bitten Sie einen Manager, die Liste zu ändern.";
    Error => "Error", "Fehler";
    FilterHeading => "Filter", "Filter";
    FComment => "Comment contains", "Kommentar enthält";
    FValue => "Value (any number format)", "Wert (beliebiges Nummernformat)";
    FType => "Type", "Typ";
    Any => "Any", "Alle";
    TypePhone => "Phone", "Telefon";
    TypeEmail => "E-mail", "E-Mail";
    FilterButton => "Filter", "Filtern";
    ResetFilter => "Reset", "Zurücksetzen";
    ColValue => "Value", "Wert";
    ColType => "Type", "Typ";
    ColComment => "Comment", "Kommentar";
    ColOrigin => "Origin", "Herkunft";
    ColAddedBy => "Added by", "Hinzugefügt von";
    ColAddedAt => "Added at", "Hinzugefügt am";
    ColExpiry => "Expires", "Läuft ab";
    ColActions => "Actions", "Aktionen";
    Never => "never", "nie";
    RemoveAction => "Remove from exceptions", "Aus Ausnahmen entfernen";
    NoEntries => "No entries match.", "Keine passenden Einträge.";
    NextPage => "Next page", "Nächste Seite";
    Pages => "Pages", "Seiten";
    FirstPage => "First page", "Erste Seite";
    AddHeading => "Add to list", "Zur Liste hinzufügen";
    AddHelp => "One entry per line: VALUE; comment. Numbers in any format, or e-mail addresses. Lines starting with # are skipped.",
        "Ein Eintrag pro Zeile: WERT; Kommentar. Nummern in beliebigem Format oder E-Mail-Adressen. Zeilen mit # am Anfang werden übersprungen.";
    EntriesLabel => "Entries", "Einträge";
    ExpiryLabel => "Expiry of the new entries", "Ablauf der neuen Einträge";
    ExpiryNever => "Never", "Nie";
    Expiry1d => "In 1 day", "In 1 Tag";
    Expiry7d => "In 7 days", "In 7 Tagen";
    Expiry30d => "In 30 days", "In 30 Tagen";
    Expiry90d => "In 90 days", "In 90 Tagen";
    Expiry365d => "In 1 year", "In 1 Jahr";
    ExpiryOn => "Or: expires on (date, UTC)", "Oder: läuft ab am (Datum, UTC)";
    ImportButton => "Import", "Importieren";
    RecordHeading => "Add a CRM record", "CRM-Datensatz hinzufügen";
    RecordHelp => "All phones and e-mails of one record at once, with one comment.",
        "Alle Telefonnummern und E-Mail-Adressen eines Datensatzes auf einmal, mit einem Kommentar.";
    RecordKind => "Record type", "Datensatztyp";
    Lead => "Lead", "Lead";
    Deal => "Deal", "Deal";
    Contact => "Contact", "Kontakt";
    Company => "Company", "Unternehmen";
    RecordId => "Record ID", "Datensatz-ID";
    Phones => "Phones (one per line)", "Telefonnummern (eine pro Zeile)";
    Emails => "E-mails (one per line)", "E-Mail-Adressen (eine pro Zeile)";
    CommentLabel => "Comment", "Kommentar";
    AddRecordButton => "Add record", "Datensatz hinzufügen";
    ResultHeading => "Result", "Ergebnis";
    Added => "added", "hinzugefügt";
    Updated => "updated", "aktualisiert";
    Unchanged => "unchanged", "unverändert";
    Refused => "refused", "abgelehnt";
    RefusedHeading => "Refused lines", "Abgelehnte Zeilen";
    LineNo => "Line", "Zeile";
    ConfirmTitle => "Remove from exceptions?", "Aus Ausnahmen entfernen?";
    ConfirmText => "Calls from this value will be screened like any other caller again.",
        "Anrufe von diesem Wert werden danach wieder wie alle anderen behandelt.";
    ConfirmYes => "Yes, remove", "Ja, entfernen";
    Cancel => "Cancel", "Abbrechen";
    NotListed => "is not on the list", "steht nicht auf der Liste";
    Removed => "Removed from the list:", "Von der Liste entfernt:";
    CallsTitle => "Calls", "Anrufe";
    FLine => "Line", "Leitung";
    FVerdict => "Verdict", "Ergebnis";
    VerdictLog => "logged (CRM)", "erfasst (CRM)";
    VerdictException => "exception", "Ausnahme";
    FDirection => "Direction", "Richtung";
    Inbound => "Inbound", "Eingehend";
    Outbound => "Outbound", "Ausgehend";
    FOutcome => "Outcome", "Ausgang";
    Completed => "completed", "beendet";
    Failed => "failed", "fehlgeschlagen";
    Cancelled => "cancelled", "abgebrochen";
    Expired => "expired", "abgelaufen";
    FSince => "From (UTC)", "Von (UTC)";
    FUntil => "Until (UTC)", "Bis (UTC)";
    ExportCsv => "Export CSV", "Als CSV exportieren";
    PerDay => "Calls per day", "Anrufe pro Tag";
    PerLine => "Calls per line", "Anrufe pro Leitung";
    ExceptionCalls => "exception calls", "Ausnahme-Anrufe";
    LoggedCalls => "logged calls", "erfasste Anrufe";
    Total => "Total", "Gesamt";
    Day => "Day", "Tag";
    NoLine => "(no line)", "(keine Leitung)";
    ColStart => "Start", "Beginn";
    ColClient => "Client", "Kunde";
    ColLine => "Line", "Leitung";
    ColDirection => "Direction", "Richtung";
    ColVerdict => "Verdict", "Ergebnis";
    ColOutcome => "Outcome", "Ausgang";
    ColDuration => "Duration (s)", "Dauer (s)";
    ColResponsible => "Responsible", "Verantwortlich";
    Details => "Details", "Details";
    ColAnswer => "Answered", "Angenommen";
    ColEnd => "Ended", "Beendet";
    Transfer => "Transfer", "Weiterleitung";
    NoCalls => "No calls match.", "Keine passenden Anrufe.";
    LiveNote => "The newest calls appear here as they end.", "Die neuesten Anrufe erscheinen hier, sobald sie enden.";
    LinesTitle => "Lines", "Leitungen";
    ColNumber => "Number", "Nummer";
    ColCreate => "Creates", "Legt an";
    ColCreateFor => "For calls", "Für Anrufe";
    ColSource => "Source", "Quelle";
    ColCrmMode => "CRM mode", "CRM-Modus";
    ColQueue => "Queue", "Warteschlange";
    ColForward => "Forwarding", "Weiterleitung";
    Defaults => "All other numbers (defaults)", "Alle anderen Nummern (Standard)";
    ForwardOff => "no", "nein";
    ForwardHeader => "to the responsible (header)", "an Verantwortliche (Header)";
    ForwardRuri => "to the responsible (header and Request-URI)", "an Verantwortliche (Header und Request-URI)";
    LinesNote => "As the running configuration has them.", "Wie in der laufenden Konfiguration.";
    TryHeading => "What would this caller get?", "Was bekäme dieser Anrufer?";
    TryNumber => "Client number (empty: withheld)", "Nummer des Kunden (leer: unterdrückt)";
    TryLine => "Line (the number dialled, or the PBX caller)", "Leitung (gewählte Nummer bzw. Anrufer der Telefonanlage)";
    TryButton => "Check", "Prüfen";
    Responsible => "Responsible", "Verantwortlich";
    Tags => "Headers towards the PBX", "Header zur Telefonanlage";
    ForwardTo => "Request-URI becomes", "Request-URI wird";
    AuditTitle => "Audit", "Änderungsprotokoll";
    ColAt => "When", "Wann";
    ColActor => "Who", "Wer";
    ColAction => "Action", "Aktion";
    ActAdd => "added", "hinzugefügt";
    ActUpdate => "updated", "geändert";
    ActRemove => "removed", "entfernt";
    ActExpire => "expired", "abgelaufen";
    FActor => "Who", "Wer";
    FAction => "Action", "Aktion";
    AuditScanned => "Searched this far without more matches; go on from here:",
        "Bis hierher ohne weitere Treffer gesucht; weiter ab hier:";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_has_both_languages() {
        for m in M::ALL {
            assert!(!m.text(Lang::En).is_empty(), "{m:?}");
            assert!(!m.text(Lang::De).is_empty(), "{m:?}");
        }
    }

    #[test]
    fn accept_language_picks_the_best_supported() {
        assert_eq!(accept_language("de-DE,de;q=0.9,en;q=0.8"), Some(Lang::De));
        assert_eq!(accept_language("fr-FR, en;q=0.5, de;q=0.7"), Some(Lang::De));
        assert_eq!(accept_language("en-GB, de"), Some(Lang::En));
        assert_eq!(accept_language("fr, de;q=0"), None);
        assert_eq!(accept_language(""), None);
    }
}
