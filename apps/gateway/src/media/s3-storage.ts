import type { Readable } from "node:stream";
import { DeleteObjectCommand, GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import type { SniffedType } from "./sniff.js";
import { contentDisposition, type MediaStorage } from "./storage.js";

export interface S3StorageOptions {
  bucket: string;
  region: string;
  /** For S3-compatible stores (MinIO, R2...); empty for AWS. */
  endpoint?: string | undefined;
  forcePathStyle: boolean;
  /** Lifetime of presigned GET URLs, in seconds. */
  urlTtlSeconds: number;
  /** The clock presigned URLs are signed with; tests pass a fixed one. */
  now?: () => Date;
}

/**
 * Files in an S3 bucket, handed out as presigned GET URLs that expire. Credentials come from the
 * AWS SDK's default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a web identity on EKS...), never from our config or logs.
 */
export class S3MediaStorage implements MediaStorage {
  readonly kind = "s3" as const;
  private readonly client: S3Client;
  private readonly now: () => Date;

  constructor(private readonly options: S3StorageOptions) {
    this.client = new S3Client({
      region: options.region,
      forcePathStyle: options.forcePathStyle,
      ...(options.endpoint ? { endpoint: options.endpoint } : {}),
    });
    this.now = options.now ?? (() => new Date());
  }

  async save(identifier: string, type: SniffedType, body: Readable): Promise<number> {
    let size = 0;
    body.on("data", (chunk: Buffer) => (size += chunk.length));
    // Multipart upload: the size is unknown up front and the file is never held whole in memory.
    await new Upload({
      client: this.client,
      // The sniffed type, never the client's, and how a browser opening the presigned URL must treat it.
      params: {
        Bucket: this.options.bucket,
        Key: identifier,
        Body: body,
        ContentType: type.type,
        ContentDisposition: contentDisposition(identifier, type),
      },
    }).done();
    return size;
  }

  async locate(identifier: string): Promise<{ url: string; expiresAt: Date | null }> {
    const signingDate = this.now();
    const url = await getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.options.bucket, Key: identifier }), {
      expiresIn: this.options.urlTtlSeconds,
      signingDate,
    });
    return { url, expiresAt: new Date(signingDate.getTime() + this.options.urlTtlSeconds * 1000) };
  }

  async remove(identifier: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.options.bucket, Key: identifier }));
  }
}

