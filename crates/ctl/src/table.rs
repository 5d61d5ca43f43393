//! Plain-text tables in the manner of patronictl: a title line, aligned
//! columns, borders of `+`, `-` and `|`.

pub struct Table {
    title: String,
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, head: &[&str]) -> Table {
        Table {
            title: title.into(),
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.head.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r.get(i).map(|c| c.chars().count()).unwrap_or(0))
                .chain([self.head[i].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..n).map(width).collect();
        let line = |fill: &str| {
            let mut s = String::from("+");
            for w in &widths {
                s.push_str(&fill.repeat(w + 2));
                s.push('+');
            }
            s
        };
        let cells = |r: &[String]| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let c = r.get(i).map(String::as_str).unwrap_or("");
                s.push_str(&format!(" {c}{} |", " ".repeat(w - c.chars().count())));
            }
            s
        };
        let mut top = line("-");
        if !self.title.is_empty() {
            let t = format!("+ {} ", self.title);
            if t.chars().count() < top.chars().count() {
                top = t.clone() + &top.chars().skip(t.chars().count()).collect::<String>();
            } else {
                top = t;
            }
        }
        let mut out = vec![top, cells(&self.head), line("-")];
        out.extend(self.rows.iter().map(|r| cells(r)));
        out.push(line("-"));
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new("Cluster: t", &["Member", "Role"]);
        t.row(vec!["n0".into(), "Leader".into()]);
        t.row(vec!["node-long".into(), "Replica".into()]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[0].starts_with("+ Cluster: t "), "{s}");
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[1].chars().count()),
            "{s}"
        );
        assert_eq!(lines[3], "| n0        | Leader  |");
    }
}
