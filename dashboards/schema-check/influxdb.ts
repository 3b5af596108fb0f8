// What @grafana/schema 10.4 leaves untyped, declared here so that smartmine's boards are checked there too.
//
// AsJson: the package's types spell string enums (ThresholdsMode, FieldColorModeId, ...) as TypeScript
// enums, which a JSON string is not assignable to; AsJson<T> is T with each enum replaced by its values,
// i.e. the dashboard as Grafana stores it. Everything else (required fields, field types, unknown keys
// of object literals) is the package's own type unchanged.
//
// InfluxQLTarget / InfluxQLAnnotation: the InfluxDB data source's query (InfluxQuery) and legacy
// annotation fields live in Grafana's source (public/app/plugins/datasource/influxdb/types.ts), not in
// any published package; copied from Grafana 10.4.2, only the fields smartmine writes.
import type { AnnotationQuery, AnnotationTarget, Dashboard, DataQuery, Panel } from "@grafana/schema";

export type AsJson<T> = T extends string
  ? `${T}`
  : T extends ReadonlyArray<infer U>
    ? Array<AsJson<U>>
    : T extends object
      ? { [K in keyof T]: AsJson<T[K]> }
      : T;

export interface InfluxQLTarget extends DataQuery {
  query: string;
  rawQuery: true;
  resultFormat: "time_series" | "table" | "logs";
  alias?: string;
}

// Grafana's built-in "-- Grafana --" annotations by tags: the package's AnnotationTarget as a query.
export type GrafanaTagsAnnotation = AsJson<AnnotationQuery<DataQuery & AnnotationTarget>>;

// The InfluxDB annotation editor stores the query and the columns beside the package's fields.
export type InfluxQLAnnotation = AsJson<AnnotationQuery> & {
  query?: string;
  textColumn?: string;
  tagsColumn?: string;
  titleColumn?: string;
  timeEndColumn?: string;
};

// A panel of one plugin: the package's Panel with that plugin's Options (saved boards may leave out any
// option; Grafana fills in the plugin's defaults) and FieldConfig, and InfluxDB targets.
export type PanelOf<TOptions, TFieldConfig, TTarget> = AsJson<
  Omit<Panel<TOptions, TFieldConfig>, "options" | "targets"> & {
    options: Partial<TOptions>;
    targets: TTarget[];
  }
>;

// The package's Dashboard, whose annotation list also admits the data sources' own annotation fields.
export type BoardOf<TAnnotation> = AsJson<Dashboard> & { annotations?: { list?: TAnnotation[] } };
export type SmartmineDashboard = BoardOf<InfluxQLAnnotation | GrafanaTagsAnnotation>;
